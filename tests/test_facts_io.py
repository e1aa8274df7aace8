"""Reading and writing fact files: YAML <-> RDF round trips, folders, the example KBs."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbsync.errors import FactsError
from kbsync.facts import (Fact, KnowledgeBase, LocalityProbe, Relation, dump_yaml, kb_to_yaml,
                          load_knowledge_base, merge, parse_rdf, parse_yaml_facts,
                          write_rdf)
from kbsync.facts.yaml_io import parse_yaml

FORMATS = {"turtle": "kb.ttl", "nt": "kb.nt", "json-ld": "kb.jsonld"}

EXAMPLE_YAML = """\
version: 1
relations:
  P17: {label: country, templates: ["{subject} is located in the country of", "{subject}, located in"]}
facts:
  - subject: Eiffel Tower
    relation: P17
    object: France
    paraphrases: ["Where is the Eiffel Tower? It is in"]
    locality: [{prompt: "The Colosseum is located in", answer: "Italy"}]
  - subject: Big Ben
    relation: P17
    object: United Kingdom
  - subject: "Norway"
    relation: P17
    object: "no"
    id: tricky-yaml
    source: https://example.org/ref
    valid_from: "1905"
"""

EXAMPLE_TTL = """\
@prefix wdt: <http://www.wikidata.org/prop/direct/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix ex: <http://example.org/> .

ex:Eiffel_Tower rdfs:label "Eiffel Tower"@en ; wdt:P17 ex:France .
ex:France rdfs:label "France" , "Frankreich"@de .
ex:Big_Ben rdfs:label "Big Ben" ; wdt:P17 "United Kingdom" .
"""


def example_kb() -> KnowledgeBase:
    return merge([parse_yaml_facts(EXAMPLE_YAML, "kb.yaml")])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_yaml_to_rdf_round_trip(fmt, tmp_path):
    kb = example_kb()
    path = tmp_path / FORMATS[fmt]
    path.write_text(write_rdf(kb, fmt))
    assert load_knowledge_base(path) == kb


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_rdf_output_is_byte_stable(fmt):
    kb = example_kb()
    assert write_rdf(kb, fmt) == write_rdf(KnowledgeBase.from_json(kb.to_json()), fmt)


def test_yaml_writer_round_trip(tmp_path):
    kb = example_kb()
    (tmp_path / "kb.yaml").write_text(kb_to_yaml(kb))
    assert load_knowledge_base(tmp_path / "kb.yaml") == kb
    assert "'no'" in kb_to_yaml(kb)  # quoted, so YAML does not read it back as False


def test_turtle_reader_uses_labels_and_literals(write_files):
    folder = write_files({"relations.yaml": EXAMPLE_YAML.split("facts:")[0], "kb.ttl": EXAMPLE_TTL})
    kb = load_knowledge_base(folder)
    assert {k: f.object for k, f in kb.facts.items()} == {
        "Eiffel Tower/P17": "France", "Big Ben/P17": "United Kingdom"}


def test_relations_can_be_defined_in_rdf():
    text = """\
@prefix kb: <https://kbsync.dev/ns#> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix ex: <http://example.org/> .
ex:capital kb:relationId "capital" ; rdfs:label "capital" ;
    kb:templates ( "The capital of {subject} is" "{subject}'s capital is" ) .
<https://kbsync.dev/relation/P1> rdfs:label "one" ; kb:template "{subject} b" , "{subject} a" .
ex:France rdfs:label "France" ; ex:capital ex:Paris .
ex:Paris rdfs:label "Paris" .
"""
    kb = merge([parse_rdf(text, "turtle", "x.ttl")])
    assert kb.relations["capital"].templates == ["The capital of {subject} is",
                                                 "{subject}'s capital is"]
    assert kb.relations["P1"].templates == ["{subject} a", "{subject} b"]  # unordered: sorted
    assert kb.facts["France/capital"].object == "Paris"


def test_same_facts_in_yaml_and_turtle_are_equal(write_files, tmp_path):
    kb = example_kb()
    yaml_dir = write_files({"kb.yaml": EXAMPLE_YAML}, tmp_path / "y")
    ttl_dir = write_files({"relations.yaml": dump_yaml(kb.relations.values()),
                           "facts.ttl": write_rdf(kb, "turtle", include_relations=False)},
                          tmp_path / "t")
    assert load_knowledge_base(yaml_dir) == load_knowledge_base(ttl_dir)
    assert load_knowledge_base(yaml_dir).content_hash() == load_knowledge_base(ttl_dir).content_hash()


def test_folder_mixes_formats_recursively_and_skips_others(write_files):
    kb = example_kb()
    facts = sorted(kb.facts.values(), key=lambda f: f.key)
    folder = write_files({
        "relations.yml": dump_yaml(kb.relations.values()),
        "a/one.nt": write_rdf(kb, "nt", include_relations=False, facts=facts[:1]),
        "b/c/two.json-ld": write_rdf(kb, "json-ld", include_relations=False, facts=facts[1:2]),
        "three.yaml": dump_yaml(facts=facts[2:]),
        "README.md": "not facts", "notes.txt": "x: [",
        ".hidden/broken.yaml": "x: [", ".swap.yaml": "x: [",
    })
    assert load_knowledge_base(folder) == kb


def test_identical_duplicates_across_files_are_fine(write_files):
    folder = write_files({"a.yaml": EXAMPLE_YAML, "b.yaml": EXAMPLE_YAML})
    assert load_knowledge_base(folder) == example_kb()


def test_empty_folder_and_empty_file(write_files, tmp_path):
    assert load_knowledge_base(tmp_path) == KnowledgeBase()
    assert load_knowledge_base(write_files({"empty.yaml": ""})) == KnowledgeBase()


def test_demo_yaml_and_turtle_are_equal(repo_root, tmp_path):
    demo = load_knowledge_base(repo_root / "facts" / "demo")
    shutil.copy(repo_root / "facts" / "demo" / "relations.yaml", tmp_path)
    shutil.copy(repo_root / "facts" / "demo.ttl", tmp_path)
    assert len(demo.facts) >= 50      # issue 2: a demo of 50 to 100 facts
    assert load_knowledge_base(tmp_path) == demo


def test_example_pool_loads_with_every_relation_templated(repo_root):
    everything = load_knowledge_base(repo_root / "facts")  # pool + demo + demo.ttl agree
    pool_keys = set(everything.facts)
    demo = load_knowledge_base(repo_root / "facts" / "demo")
    assert len(pool_keys) >= 350 and set(demo.facts) <= pool_keys
    used = {f.relation for f in everything.facts.values()}
    assert used == set(everything.relations)
    for relation in everything.relations.values():
        assert all(t.count("{subject}") == 1 for t in relation.templates)


def test_json_ld_remote_context_is_refused(write_files):
    for doc in ({"@context": "https://schema.org/", "@id": "http://x"},
                {"@context": [{"a": "http://a/"}, "http://evil/ctx.jsonld"]},
                {"@context": {"@import": "http://evil/ctx"}},
                {"@graph": [{"@context": "http://evil/nested", "@id": "http://x"}]}):
        folder = write_files({"kb.jsonld": json.dumps(doc)})
        with pytest.raises(FactsError, match="external context") as err:
            load_knowledge_base(folder)
        assert err.value.file.endswith("kb.jsonld")


def test_network_is_blocked_while_parsing(monkeypatch):
    import socket

    from kbsync.facts import rdf_io

    def parse_that_connects(self, *args, **kwargs):
        socket.getaddrinfo("example.org", 80)  # what a remote @context fetch would do

    monkeypatch.setattr("rdflib.Graph.parse", parse_that_connects)
    with pytest.raises(FactsError, match="network access blocked"):
        rdf_io.parse_rdf("{}", "json-ld", "kb.jsonld")


def test_yaml_parser_keeps_positions():
    doc = parse_yaml("a:\n  - x: 1\n    y: two\n", "f.yaml")
    assert doc.data == {"a": [{"x": 1, "y": "two"}]}
    location = doc.location(("a", 0, "y"))
    assert (location.line, location.column) == (3, 8)


# ---------------------------------------------------------------- properties

_text = st.text(st.characters(categories=["L", "N", "P", "S"], include_characters=" "),
                min_size=1, max_size=12).map(str.strip).filter(
                    lambda s: bool(s) and "{" not in s and "}" not in s)
_relation = st.builds(lambda rid, label, tail: Relation(id=rid, label=label,
                                                         templates=[f"{{subject}} {tail}"]),
                      st.sampled_from(["P17", "P19", "mine"]), _text, _text)
_fact = st.builds(
    lambda subject, rid, obj, paras, probes, fid: Fact(
        subject=subject, relation=rid, object=obj, paraphrases=paras,
        locality=[LocalityProbe(prompt=p, answer=a) for p, a in probes], id=fid),
    _text, st.sampled_from(["P17", "P19", "mine"]), _text, st.lists(_text, max_size=2),
    st.lists(st.tuples(_text, _text), max_size=2), st.none() | _text)


@st.composite
def knowledge_bases(draw) -> KnowledgeBase:
    relations = {r.id: r for r in draw(st.lists(_relation, min_size=3, max_size=3,
                                                unique_by=lambda r: r.id))}
    facts = {f.key: f for f in draw(st.lists(_fact, max_size=6, unique_by=lambda f: f.key))}
    return KnowledgeBase(relations=relations, facts=facts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(knowledge_bases(), st.sampled_from(["turtle", "nt", "json-ld", "yaml"]))
def test_any_kb_survives_every_format(kb, fmt):
    import pathlib
    import tempfile

    text = kb_to_yaml(kb) if fmt == "yaml" else write_rdf(kb, fmt)
    name = "kb.yaml" if fmt == "yaml" else FORMATS[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        assert load_knowledge_base(path) == kb
