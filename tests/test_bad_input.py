"""Bad input is refused cheaply, with file:line and the README's exit code, never with a
traceback; printed text cannot drive the terminal; config paths are the project's
(issue 20, items 4 and 5)."""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from kbsync.cli.main import main
from kbsync.cli.options import handle_errors
from kbsync.cli.printers import plan_lines
from kbsync.config import load_config
from kbsync.errors import ConfigError, FactsError, ModelError
from kbsync.facts import load_knowledge_base
from kbsync.facts import yaml_io
from kbsync.plan.plan import EditRequest, Plan
from kbsync.project import Project, find_project

REL = 'relations:\n  P17: {label: country, templates: ["{subject} is located in"]}\n'


def fact(subject: str, obj: str = "France") -> str:
    return f"  - {{subject: {yaml_quote(subject)}, relation: P17, object: {yaml_quote(obj)}}}\n"


def yaml_quote(text: str) -> str:
    # a double-quoted YAML scalar with \x / \u escapes: the file itself stays plain ASCII
    return '"' + "".join(c if 32 <= ord(c) < 127 else f"\\u{ord(c):04x}" for c in text) + '"'


def nested_aliases(levels: int = 6, width: int = 10) -> str:
    """~400 bytes that expand to width**levels paths when every alias is followed."""
    lines = [f"a0: &a0 [{', '.join('x' * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


TTL_HEAD = ("@prefix wdt: <http://www.wikidata.org/prop/direct/> .\n"
            "@prefix ex: <http://example.org/> .\n"
            "@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .\n"
            "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n"
            "@prefix kb: <https://kbsync.dev/ns#> .\n")   # 5 lines

# name: (files, file with the error, line or None, message part)
REFUSED = {
    "nested aliases (6 levels of 10)": (
        {"bomb.yaml": nested_aliases()}, "bomb.yaml", 2, "YAML alias `*a0`"),
    "recursive alias": ({"f.yaml": "facts: &x [*x]\n"}, "f.yaml", 1, "YAML alias `*x`"),
    "alias of a relation block": (
        {"f.yaml": "relations: &r\n  P17: {label: c, templates: ['{subject} x']}\nx: *r\n"},
        "f.yaml", 3, "YAML alias `*r`"),
    "ESC sequences in a subject": (
        {"f.yaml": REL + "facts:\n" + fact("Paris\x1b[2K\x1b[1A")}, "f.yaml", 4,
        "facts[0].subject: contains the control character U+001B (ESCAPE)"),
    "NUL in an object": (
        {"f.yaml": REL + "facts:\n" + fact("Paris", "Fra\x00nce")}, "f.yaml", 4,
        "facts[0].object: contains the control character U+0000 (NUL)"),
    "C1 control in a subject": (
        {"f.yaml": REL + "facts:\n" + fact("A\x9bB")}, "f.yaml", 4, "U+009B"),
    "bidi override in a subject": (
        {"f.yaml": REL + "facts:\n" + fact("abc\u202edef")}, "f.yaml", 4,
        "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    "control character in a Turtle label": (
        {"r.yaml": REL, "f.ttl": TTL_HEAD + 'ex:A rdfs:label "A\\u001B[2K" ; wdt:P17 ex:B .\n'
                                            'ex:B rdfs:label "B" .\n'},
        "f.ttl", 6, "U+001B"),
    "990-level YAML nesting": (
        {"f.yaml": "facts: " + "[" * 990 + "]" * 990 + "\n"}, "f.yaml", 1,
        "nested more than 64 levels deep"),
    "990-level YAML block nesting": (
        {"f.yaml": "".join("  " * i + "-\n" for i in range(990))}, "f.yaml", 66,
        "nested more than 64 levels deep"),
    "990-level JSON-LD nesting": (
        {"f.jsonld": "[" * 990 + "]" * 990}, "f.jsonld", 1,
        "JSON-LD nested more than 64 levels deep"),
    "cyclic RDF list": (
        {"f.ttl": TTL_HEAD + 'ex:p kb:relationId "p" ; rdfs:label "p" ; kb:templates ex:l1 .\n'
                             'ex:l1 rdf:first "{subject} a" ; rdf:rest ex:l2 .\n'
                             'ex:l2 rdf:first "{subject} b" ; rdf:rest ex:l1 .\n'},
        "f.ttl", 6, "cyclic RDF list"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_bad_fact_file_is_refused_at_its_line(name, write_files):
    files, bad, line, message = REFUSED[name]
    folder = write_files(files)
    started = time.perf_counter()
    with pytest.raises(FactsError) as caught:
        load_knowledge_base(folder)
    assert time.perf_counter() - started < 1.0, "refused cheaply"
    err = caught.value
    assert (Path(err.file).name, err.line) == (bad, line), str(err)
    assert message in err.message, str(err)
    assert err.hint


def test_node_count_is_capped(write_files, monkeypatch):
    monkeypatch.setattr(yaml_io, "MAX_NODES", 50)
    folder = write_files({"f.yaml": REL + "facts:\n" + "".join(fact(f"S{i}") for i in range(20))})
    with pytest.raises(FactsError, match="more than 50 YAML nodes") as caught:
        load_knowledge_base(folder)
    assert caught.value.line is not None and "split" in caught.value.hint


@pytest.mark.parametrize("text, line", [
    ("model: &m x\ndevice: *m\n", 2),
    ("hparams: " + "{a: " * 990 + "1" + "}" * 990 + "\n", 1),
])
def test_bad_kbsync_yaml_is_a_config_error_at_its_line(text, line, tmp_path):
    (tmp_path / "kbsync.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "kbsync.yaml")
    assert caught.value.line == line


def test_the_alias_file_beside_the_demo_facts_is_refused_by_plan_in_under_a_second(tmp_path):
    root = tmp_path / "proj"
    assert CliRunner().invoke(main, ["init", str(root)]).exit_code == 0
    (root / "facts" / "bomb.yaml").write_text(nested_aliases(), encoding="utf-8")
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["-C", str(root), "plan"])
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "bomb.yaml:2:" in result.output and "YAML alias" in result.output


def test_deep_yaml_under_the_cli_stack_is_an_error_not_a_recursion_error(tmp_path):
    root = tmp_path / "proj"
    assert CliRunner().invoke(main, ["init", str(root)]).exit_code == 0
    (root / "facts" / "deep.yaml").write_text("[" * 990 + "]" * 990 + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["-C", str(root), "plan"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "deep.yaml:1:" in result.output and "nested more than" in result.output


# ------------------------------------------------------------------ NFC keys

NFC, NFD = unicodedata.normalize("NFC", "Zürich"), unicodedata.normalize("NFD", "Zürich")


def test_nfc_and_nfd_spellings_of_a_subject_contradict(write_files):
    assert NFC != NFD
    folder = write_files({"f.yaml": REL + "facts:\n" + fact(NFC, "Switzerland")
                                        + fact(NFD, "France")})
    with pytest.raises(FactsError, match="contradiction") as caught:
        load_knowledge_base(folder)
    assert caught.value.line == 5


def test_keys_and_text_are_nfc(write_files):
    folder = write_files({"f.yaml": REL + "facts:\n" + fact(NFD, NFD) + fact(NFC, NFC)})
    kb = load_knowledge_base(folder)
    assert list(kb.facts) == [f"{NFC}/P17"] and kb.facts[f"{NFC}/P17"].object == NFC


# ------------------------------------------------------------------ printing

def request(**fields: str | None) -> EditRequest:
    base = dict(op="add", fact_key="S/P17", subject="S", relation="P17", old_object=None,
                new_object="O")
    return EditRequest(**{**base, **fields})


@pytest.mark.parametrize("req", [
    request(fact_key="A\x1b[2K\x1b[1A/P17"),
    request(new_object="O\x1b]0;title\x07"),
    request(op="update", old_object="x\u202ey", new_object="z\x00"),
    request(op="remove", old_object="\x9b2J", new_object=None),
])
def test_plan_lines_escape_control_and_bidi_characters(req):
    plan = Plan(requests=[req], base_serial=0, base_snapshot=None, facts_hash="h", facts_dir="f")
    text = click.unstyle("\n".join(plan_lines(plan)))   # our own colours are fine
    assert not any(c in text for c in "\x1b\x00\x07\x9b\u202e"), repr(text)
    assert "\\x" in text or "\\u" in text


def test_error_messages_are_printed_escaped():
    @click.command()
    @handle_errors
    def bad() -> None:
        raise FactsError("bad\x1b[2K", file="f\u202e.yaml", line=1, hint="a\nb")

    result = CliRunner().invoke(bad, [])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "f\\u202e.yaml:1: bad\\x1b[2K" in result.output


# ------------------------------------------------------------------ store and caches

@pytest.mark.parametrize("error, code", [
    (sqlite3.DatabaseError("file is not a database"), 5),
    (sqlite3.DatabaseError("database disk image is malformed"), 5),
    (sqlite3.OperationalError("disk I/O error"), 1),
])
def test_sqlite_errors_get_the_readme_exit_code(error, code):
    @click.command()
    @handle_errors
    def fails() -> None:
        raise error

    result = CliRunner().invoke(fails, [])
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    assert str(error) in result.output


@pytest.mark.parametrize("args", [["log"], ["audit", "verify"]])
def test_a_corrupt_ledger_is_an_integrity_failure(args, tmp_path):
    root = tmp_path / "proj"
    assert CliRunner().invoke(main, ["init", str(root)]).exit_code == 0
    (root / ".kbsync" / "ledger.db").write_bytes(b"not a database" * 500)
    result = CliRunner().invoke(main, ["-C", str(root), *args])
    assert result.exit_code == 5 and isinstance(result.exception, SystemExit), result.output
    assert "ledger" in result.output and "corrupt" in result.output


@pytest.mark.parametrize("cache_text", ["{not json", "[1, 2]", "\xff\xfe", '{"k": 3}'])
def test_a_corrupt_fingerprint_cache_is_rebuilt(cache_text, tmp_path, monkeypatch):
    from kbsync.lm.load import file_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("KBSYNC_CACHE", str(tmp_path / "cache"))
    clean = file_fingerprint(model)
    (tmp_path / "cache" / "fingerprints.json").write_text(cache_text, encoding="latin-1")
    assert file_fingerprint(model) == clean
    assert file_fingerprint(model) == clean      # and the rewritten cache reads back


def cli_options(command: click.Command) -> set[str]:
    names = {opt for p in command.params for opt in getattr(p, "opts", [])}
    for sub in getattr(command, "commands", {}).values():
        names |= cli_options(sub)
    return names


def test_the_pickle_hint_names_only_flags_that_exist(tmp_path):
    from kbsync.lm.load import check_weights

    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError) as caught:
        check_weights(tmp_path, allow_pickle=False)
    hint = caught.value.hint
    flags = {word.strip("`',.()") for word in hint.split() if word.startswith("--")}
    assert flags <= cli_options(main), flags - cli_options(main)
    assert "allow_pickle: true" in hint


# ------------------------------------------------------------------ paths

def write_config(root: Path, **settings: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kbsync.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")


@pytest.mark.parametrize("model, corpus, expect_model, expect_corpus", [
    ("models/tiny", "texts/domain.txt", "{root}/models/tiny", "{root}/texts/domain.txt"),
    ("./tiny", "biographies", "{root}/tiny", "biographies"),
    ("default", "mixed", "default", "mixed"),
    ("/abs/model", "/abs/c.txt", "/abs/model", "/abs/c.txt"),
])
def test_config_paths_are_relative_to_kbsync_yaml(model, corpus, expect_model, expect_corpus,
                                                  tmp_path, monkeypatch):
    root = (tmp_path / "proj").resolve()
    write_config(root, model=model, hparams={"stats_corpus": corpus, "layers": [1]})
    (root / "sub" / "deeper").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models" / "tiny").mkdir(parents=True)   # a decoy the cwd would find
    for cwd in (elsewhere, root / "sub" / "deeper"):
        monkeypatch.chdir(cwd)
        config = find_project(root / "sub" / "deeper").config
        assert config.model == expect_model.format(root=root)
        assert config.hparams == {"stats_corpus": expect_corpus.format(root=root), "layers": [1]}


def test_a_given_config_is_resolved_too(tmp_path):
    from kbsync.config import Config

    project = Project(tmp_path, Config(model="m"))
    assert project.config.model == str(tmp_path.resolve() / "m")


def test_apply_with_C_and_a_relative_model_path(tiny_llama_dir, tmp_path, monkeypatch):
    """`kbsync -C proj apply` from another folder edits the project's model."""
    import shutil

    from kbproject import cli, key, make_project

    root = tmp_path / "proj"
    shutil.copytree(tiny_llama_dir, root / "models" / "tiny")
    project = make_project(root, Path("models/tiny"), facts={"Danube": "British"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli(Path("..") / "proj", "apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    state = Project(project.root)
    from kbsync.store.state import read_applied_state

    assert key("Danube") in read_applied_state(state.kbsync_dir).kb.facts
