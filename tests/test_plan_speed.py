"""Plan speed (issue 22, item 4), tested by behaviour, never by the clock: the fast readers
give the facts the position-keeping readers give, refuse what they refuse at the same
file:line, compute no positions on success, look RDF terms up in O(log n) steps, and the
facts are parsed once per content."""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbsync.errors import FactsError
from kbsync.facts import load as load_mod
from kbsync.facts import rdf_io, rdf_locate, yaml_io
from kbsync.facts.load import fact_files, load_knowledge_base, merge, parse_fact_text
from kbsync.facts.rdf_io import RDF_FORMATS, parse_rdf
from kbsync.facts.rdf_write import write_rdf
from kbsync.facts.source import FileContent, Location, gc_paused
from kbsync.facts.yaml_io import parse_yaml, parse_yaml_facts

from test_bad_input import REFUSED
from test_facts_io import EXAMPLE_TTL, EXAMPLE_YAML

REPO = Path(__file__).resolve().parents[1]
REL = 'version: 1\nrelations:\n  P17: {label: country, templates: ["{subject} is in"]}\n'


def positioned(text: str, file: str) -> FileContent:
    """The position-keeping reader of the file's format (the reference)."""
    suffix = Path(file).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml_facts(text, file, positions=True)
    return parse_rdf(text, RDF_FORMATS[suffix], file, positions=True)


def load_positioned(folder: Path):
    return merge([positioned(f.read_text(encoding="utf-8"), str(f)) for f in fact_files(folder)])


def fixture_files() -> list[Path]:
    files = [REPO / "facts" / "relations.yaml", REPO / "facts" / "demo.ttl",
             *sorted((REPO / "facts" / "pool").glob("*.yaml")),
             *sorted((REPO / "kbsync" / "data" / "demo").glob("*.yaml"))]
    return [f for f in files if f.is_file()]


# ------------------------------------------------------------------ same facts

@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_fast_path_reads_the_fixtures_as_the_positioned_path_does(path):
    text = path.read_text(encoding="utf-8")
    fast, slow = parse_fact_text(text, str(path)), positioned(text, str(path))
    assert [r for r, _ in fast.relations] == [r for r, _ in slow.relations]
    assert [f for f, _ in fast.facts] == [f for f, _ in slow.facts]
    assert fast.facts or fast.relations
    # fast: the file only; the lines come from `positioned`, as the slow path has them
    assert {loc.line for _, loc in fast.facts + fast.relations} == {None}
    again = fast.positioned()
    assert [(f, str(loc)) for f, loc in again.facts] == [(f, str(loc)) for f, loc in slow.facts]
    assert all(loc.line for _, loc in slow.facts if path.suffix == ".yaml")


@pytest.mark.parametrize("fmt", ["turtle", "nt", "json-ld"])
def test_fast_path_reads_every_rdf_format_as_the_positioned_path_does(fmt, write_files):
    kb = load_knowledge_base(write_files({"kb.yaml": EXAMPLE_YAML}))
    text = write_rdf(kb, fmt)
    file = "kb" + {"turtle": ".ttl", "nt": ".nt", "json-ld": ".jsonld"}[fmt]
    fast, slow = parse_fact_text(text, file), positioned(text, file)
    assert [f for f, _ in fast.facts] == [f for f, _ in slow.facts]
    assert merge([fast]) == merge([slow]) == kb


def test_the_demo_folder_loads_the_same_both_ways():
    folder = REPO / "kbsync" / "data" / "demo"
    assert load_knowledge_base(folder, cache=False) == load_positioned(folder)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
    | st.sampled_from(["no", "yes", "~", "1e3", "2020-01-01", "0x1f", "null", "<<", "=",
                       "*x", "&a", "- a", "a: b", "'q'", "", " lead"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.integers(0, 9) | st.booleans(), inner,
                      max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=yaml_values, flow=st.sampled_from([None, True, False]))
def test_fast_yaml_data_equals_the_composed_data(value, flow):
    text = yaml.safe_dump({"facts": value}, default_flow_style=flow, allow_unicode=True,
                          sort_keys=False)
    try:
        expected = parse_yaml(text, "f.yaml").data
    except FactsError:         # e.g. keys 4 and '4', one name to parse_yaml: both refuse
        with pytest.raises(yaml_io._Slow):
            yaml_io.fast_data(text)
        return
    assert yaml_io.fast_data(text) == expected


@pytest.mark.parametrize("text", [
    "", "# comments only\n", "---\n", "a: 1\nb: [x, 'y', ! 12, !!str 3, ~, '', 2020-01-01]\n",
    "a: &anchor 1\nb: 2\n", "? a\n", "a: !!float 1\n", "- [1, [2, [3]]]\n- {k: {k: v}}\n",
    "'1': a\n1.5: b\ntrue: c\n~: d\n", "a: |\n  block\n  text\nb: >\n  folded\n",
])
def test_fast_yaml_data_on_yaml_corners(text):
    assert yaml_io.fast_data(text) == parse_yaml(text, "f.yaml").data


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n",                       # alias
    "a: &x 1\nb: &x 2\n",                     # duplicate anchor
    "a: 1\na: 2\n",                           # duplicate key
    "1: a\n'1': b\n",                         # duplicate key, as parse_yaml names keys
    "--- a\n--- b\n",                         # two documents
    "a: [1\n",                                # syntax
    "[" * 70 + "]" * 70 + "\n",               # nesting
    "a: !!set {x, y}\n", "? [a]\n: b\n", "a: !custom x\n", "<<: {a: 1}\nb: 2\n",
])
def test_fast_yaml_leaves_refusals_and_rare_constructs_to_the_positioned_path(text):
    with pytest.raises(yaml_io._Slow):
        yaml_io.fast_data(text)


def test_yaml_the_fast_path_leaves_aside_still_loads(write_files, tmp_path):
    # an inline merge key and an unused anchor: read by the position-keeping path
    merged = REL + "facts:\n  - <<: {relation: P17}\n    subject: A\n    object: &o B\n"
    spelled = REL + "facts:\n  - {relation: P17, subject: A, object: B}\n"
    kb = load_knowledge_base(write_files({"f.yaml": merged}, tmp_path / "merged"))
    assert kb == load_knowledge_base(write_files({"f.yaml": spelled}, tmp_path / "spelled"))
    assert kb.facts["A/P17"].object == "B"


# ------------------------------------------------------------------ errors keep file:line

@pytest.mark.parametrize("name", REFUSED)
def test_bad_files_are_refused_at_the_same_place_as_by_the_positioned_path(name, write_files):
    files, *_ = REFUSED[name]
    folder = write_files(files)
    with pytest.raises(FactsError) as fast:
        load_knowledge_base(folder)
    with pytest.raises(FactsError) as slow:
        load_positioned(folder)
    assert (fast.value.message, fast.value.file, fast.value.line, fast.value.column) == (
        slow.value.message, slow.value.file, slow.value.line, slow.value.column)
    assert fast.value.line is not None


def many(n: int, bad: int | None = None, obj: str = "France") -> str:
    lines = [REL, "facts:\n"]
    for i in range(n):
        value = '"Fra\\x1bnce"' if i == bad else obj
        lines.append(f"  - subject: S{i}\n    relation: P17\n    object: {value}\n")
    return "".join(lines)


@pytest.mark.parametrize("files, where, message", [
    # many(): fact i starts on line 5 + 3i, its object on line 7 + 3i
    ({"f.yaml": many(500, bad=321)}, ("f.yaml", 7 + 321 * 3), "control character"),
    ({"a.yaml": many(300), "b.yaml": many(300, obj="Spain").replace(REL, "version: 1\n")},
     ("b.yaml", 5), "contradiction"),
    ({"f.yaml": many(50) + "  - {subject: X, relation: P71, object: Y}\n"},
     ("f.yaml", 5 + 50 * 3), "unknown relation"),
    ({"f.yaml": many(50) + "  - {subject: X, relation: P17, object: Y, subject: Z}\n"},
     ("f.yaml", 5 + 50 * 3), "duplicate key"),
    ({"r.yaml": REL, "f.ttl": "@prefix wdt: <http://www.wikidata.org/prop/direct/> .\n"
                              "<http://x/a> <http://www.w3.org/2000/01/rdf-schema#label> "
                              '"A" ; wdt:P17 <http://x/b> .\n'},
     ("f.ttl", 2), "has no rdfs:label"),
])
def test_errors_found_on_the_fast_path_carry_file_and_line(files, where, message, write_files):
    folder = write_files(files)
    with pytest.raises(FactsError) as caught:
        load_knowledge_base(folder)
    err = caught.value
    assert (Path(err.file).name, err.line) == where, str(err)
    assert message in err.message
    if message == "contradiction":
        assert f"{folder / 'a.yaml'}:" in err.message     # the other definition's line too


# ------------------------------------------------------------------ no positions on success

def test_a_good_file_is_read_without_positions(write_files, monkeypatch):
    calls = []
    real_parse, real_locator = yaml_io._parse_yaml, rdf_io.Locator
    monkeypatch.setattr(yaml_io, "_parse_yaml", lambda *a: calls.append("yaml") or real_parse(*a))
    monkeypatch.setattr(rdf_io, "Locator",
                        lambda *a: calls.append("rdf") or real_locator(*a))
    folder = write_files({"r.yaml": REL, "a.yaml": many(20).replace(REL, "version: 1\n"),
                          "b.ttl": EXAMPLE_TTL})
    assert len(load_knowledge_base(folder).facts) == 22
    assert calls == []
    (folder / "c.yaml").write_text("facts:\n  - {subject: S1, relation: P17, object: Mars}\n")
    with pytest.raises(FactsError, match="contradiction"):
        load_knowledge_base(folder)
    assert sorted(set(calls)) == ["rdf", "yaml"]      # positions only to report it


def test_the_yaml_reader_uses_libyaml():
    if yaml.__with_libyaml__:
        assert yaml_io._Loader is yaml.CSafeLoader


@pytest.mark.parametrize("bad", [False, True])
def test_the_collector_is_paused_only_while_reading(bad, write_files):
    folder = write_files({"f.yaml": many(5, bad=2 if bad else None)})
    assert gc.isenabled()
    try:
        load_knowledge_base(folder)
    except FactsError:
        assert bad
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()            # a caller's choice is kept
    finally:
        gc.enable()


# ------------------------------------------------------------------ linear RDF positions

class CountingList(list):
    """A position list that counts element reads and refuses to be scanned."""

    reads = 0

    def __getitem__(self, i):
        CountingList.reads += 1
        return super().__getitem__(i)

    def __iter__(self):
        raise AssertionError("a lookup scanned every position of a term")


def turtle(n: int) -> str:
    head = ("@prefix wdt: <http://www.wikidata.org/prop/direct/> .\n"
            "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n"
            "@prefix ex: <http://example.org/> .\n")
    return (head + "".join(f'ex:s{i} rdfs:label "S{i}" ; wdt:P17 ex:o{i % 7} .\n'
                           for i in range(n))
            + "".join(f'ex:o{k} rdfs:label "O{k}" .\n' for k in range(7)))


def test_the_locator_finds_each_triple_in_logarithmic_steps():
    from rdflib import Graph, URIRef

    n = 2000
    text = turtle(n)
    graph = Graph().parse(data=text, format="turtle")
    where = rdf_locate.Locator(text, "f.ttl", graph)
    assert len(where.index["wdt:P17"]) == n
    where.index = {token: CountingList(positions) for token, positions in where.index.items()}
    p = URIRef("http://www.wikidata.org/prop/direct/P17")
    CountingList.reads = 0
    for i in range(n):
        location = where.find(URIRef(f"http://example.org/s{i}"), p)
        assert (location.line, location.column) == (4 + i, 1 + len(f'ex:s{i} rdfs:label "S{i}" ; '))
    # wdt:P17 is written n times: a scan would read ~n/2 positions per triple
    per_triple = CountingList.reads / n
    assert per_triple <= 4 * (math.log2(n) + 2), per_triple


def test_rdf_errors_still_name_the_line_of_the_triple(write_files):
    text = turtle(300).replace('ex:s250 rdfs:label "S250" ;', "ex:s250")
    folder = write_files({"r.yaml": REL, "f.ttl": text})
    with pytest.raises(FactsError, match="has no rdfs:label") as caught:
        load_knowledge_base(folder)
    assert caught.value.line == 4 + 250


# ------------------------------------------------------------------ parsed once per content

def test_the_facts_are_parsed_once_per_content(write_files, monkeypatch):
    folder = write_files({"f.yaml": many(30)})
    parsed = []
    real = load_mod.parse_fact_text
    monkeypatch.setattr(load_mod, "parse_fact_text",
                        lambda text, file: parsed.append(file) or real(text, file))
    load_mod.clear_cache()
    first = load_knowledge_base(folder)
    assert load_knowledge_base(folder) is first          # apply after plan: no second parse
    assert len(parsed) == 1
    path = folder / "f.yaml"
    stat = path.stat()
    path.write_text(path.read_text().replace("France", "Franca", 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # same size, same mtime
    assert path.stat().st_size == stat.st_size
    changed = load_knowledge_base(folder)
    assert changed != first and len(parsed) == 2          # the bytes decide, not the stat
    assert load_knowledge_base(folder, cache=False) == changed and len(parsed) == 3


def test_a_limit_change_is_not_served_from_the_cache(write_files, monkeypatch):
    folder = write_files({"f.yaml": many(30)})
    load_knowledge_base(folder)
    monkeypatch.setattr(yaml_io, "MAX_NODES", 50)
    with pytest.raises(FactsError, match="more than 50 YAML nodes"):
        load_knowledge_base(folder)


def test_fast_locations_name_the_file():
    content = parse_yaml_facts(many(3), "f.yaml")
    assert {loc for _, loc in content.facts} == {Location("f.yaml")}
    assert parse_yaml_facts(many(3), "f.yaml", positions=True).facts[2][1].line == 5 + 2 * 3
