"""Every fact-file error says file:line (and column where known), what and how to fix."""

from __future__ import annotations

import json

import pytest

from kbsync.errors import FactsError
from kbsync.facts import load_knowledge_base

REL = 'relations:\n  P17: {label: country, templates: ["{subject} is located in"]}\n'
FACT = "facts:\n  - subject: A\n    relation: P17\n"
TTL = ("@prefix wdt: <http://www.wikidata.org/prop/direct/> .\n"
       "@prefix ex: <http://example.org/> .\n"
       "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n"
       "@prefix kb: <https://kbsync.dev/ns#> .\n")  # 4 lines

# name: (files, file with the error, line, column or None, message part, hint part or None)
CASES = {
    "malformed yaml": (
        {"f.yaml": "facts:\n  - subject: [A\n    relation: P17\n"},
        "f.yaml", 3, 13, "expected ',' or ']'", "indentation"),
    "tab indentation": (
        {"f.yaml": "facts:\n\t- subject: A\n"}, "f.yaml", 2, 1, "invalid YAML", "tabs"),
    "unknown relation": (
        {"f.yaml": REL + "facts:\n  - subject: A\n    relation: P18\n    object: B\n"},
        "f.yaml", 5, 15, "unknown relation 'P18'", "did you mean P17?"),
    "unknown relation, relations in another file": (
        {"r.yaml": REL, "f.yaml": "facts:\n  - {subject: A, relation: p17, object: B}\n"},
        "f.yaml", 2, 28, "unknown relation 'p17'", "did you mean P17?"),
    "template without subject": (
        {"f.yaml": "relations:\n  P17:\n    label: country\n    templates:\n"
                   "      - '{subject} is in'\n      - located in\n"},
        "f.yaml", 6, 9, "relations.P17.templates[1]: template 'located in' must contain "
                        "{subject} exactly once", None),
    "empty object": (
        {"f.yaml": REL + FACT + '    object: ""\n'}, "f.yaml", 6, 13,
        "facts[0].object: must not be empty", "give the fact an object"),
    "missing object value": (
        {"f.yaml": REL + FACT + "    object:\n"}, "f.yaml", 6, 12,
        "facts[0].object: is empty", "write a value"),
    "contradiction in one file": (
        {"f.yaml": REL + FACT + "    object: B\n" + "  - subject: A\n    relation: P17\n"
                                                   "    object: C\n"},
        "f.yaml", 9, 13, "contradiction: 'A/P17' is 'C' here but 'B' at ", "one object"),
    "yaml boolean": (
        {"f.yaml": REL + FACT + "    object: no\n"}, "f.yaml", 6, 13,
        "YAML reads `no` as a boolean False, not as text", 'quote it: object: "no"'),
    "yaml number": (
        {"f.yaml": REL + FACT + "    object: 1.10\n"}, "f.yaml", 6, 13,
        "YAML reads `1.10` as a number 1.1", 'quote it: object: "1.10"'),
    "yaml date": (
        {"f.yaml": REL + FACT + "    object: B\n    valid_from: 2024-01-02\n"}, "f.yaml", 7, 17,
        "YAML reads `2024-01-02` as a date", 'quote it: valid_from: "2024-01-02"'),
    "unknown key (typo)": (
        {"f.yaml": REL + "facts:\n  - subject: A\n    relation: P17\n    objetc: B\n"},
        "f.yaml", 6, 5, "unknown key `objetc`", "did you mean `object`?"),
    "unknown top-level key": (
        {"f.yaml": "version: 1\nfact:\n  - {subject: A}\n"}, "f.yaml", 2, 1,
        "unknown key `fact`", "did you mean `facts`?"),
    "unknown relation key": (
        {"f.yaml": "relations:\n  P17:\n    label: x\n    template: ['{subject} in']\n"},
        "f.yaml", 4, 5, "unknown key `template`", "did you mean `templates`?"),
    "numeric relation id": (
        {"f.yaml": 'relations:\n  17: {label: x, templates: ["{subject} a"]}\n'}, "f.yaml", 2, 3,
        "relations: key `17` is read by YAML as a number", 'quote it: "17":'),
    "wrong shape": (
        {"f.yaml": REL + FACT + "    object: B\n    paraphrases: Where is A?\n"}, "f.yaml", 7, 18,
        "facts[0].paraphrases: expected a list, got text", "one `- item` per line"),
    "missing key": (
        {"f.yaml": REL + FACT}, "f.yaml", 4, 5, "missing required key `object`", None),
    "duplicate key": (
        {"f.yaml": REL + FACT + "    object: B\n    object: C\n"}, "f.yaml", 7, 5,
        "duplicate key `object` (first defined at line 6)", None),
    "not a mapping": (
        {"f.yaml": "- a\n- b\n"}, "f.yaml", 1, 1, "must be a mapping, got a list", "version: 1"),
    "wrong version": (
        {"f.yaml": "version: 2\n"}, "f.yaml", 1, 10, "version", None),
    "relation defined twice differently": (
        {"a.yaml": REL, "b.yaml": 'relations:\n  P17: {label: land, templates: ["{subject} in"]}\n'},
        "b.yaml", 2, 3, "relation P17 is defined twice with different content (also at ", None),
    "malformed turtle": (
        {"f.ttl": TTL + 'ex:A rdfs:label "A" ;\n  wdt:P17 ex:B\n  ex:C .\n'}, "f.ttl", 7, 3,
        "invalid Turtle", None),
    "unbound prefix": (
        {"f.ttl": TTL + 'zz:A rdfs:label "A" .\n'}, "f.ttl", 5, 1, "invalid Turtle", None),
    "malformed n-triples": (
        {"f.nt": "<http://a> <http://b> <http://c> .\n<http://a> <http://b> .\n"}, "f.nt", 2,
        None, "invalid N-Triples", None),
    "malformed json-ld": (
        {"f.jsonld": '{"@context": {},\n "@id": }'}, "f.jsonld", 2, 9, "invalid JSON-LD", None),
    "blank-node statement": (
        {"r.yaml": REL, "f.ttl": TTL + 'ex:B rdfs:label "B" .\n[] rdfs:label "X" ;\n'
                                       "   wdt:P17 ex:B .\n"},
        "f.ttl", 7, 4, "blank-node statement", "IRI"),
    "blank-node object": (
        {"r.yaml": REL, "f.ttl": TTL + 'ex:A rdfs:label "A" ;\n   wdt:P17 [ rdfs:label "B" ] .\n'},
        "f.ttl", 6, 4, "blank-node statement", "IRI"),
    "missing label": (
        {"r.yaml": REL, "f.ttl": TTL + 'ex:B rdfs:label "B" .\nex:A wdt:P17 ex:B .\n'},
        "f.ttl", 6, 1, "<http://example.org/A> has no rdfs:label", "rdfs:label"),
    "unknown relation in turtle": (
        {"r.yaml": REL, "f.ttl": TTL + 'ex:B rdfs:label "B" .\nex:A rdfs:label "A" .\n'
                                       "ex:A wdt:P99 ex:B .\n"},
        "f.ttl", 7, 6, "unknown relation 'P99'", None),
    "unmapped predicate": (
        {"f.ttl": TTL + 'ex:A rdfs:label "A" ;\n  ex:country "B" .\n'}, "f.ttl", 6, 3,
        "<http://example.org/country> is not mapped to a relation", "kb:relationId"),
    "misspelt kbsync term": (
        {"f.ttl": TTL + 'ex:s kb:subject ex:A ;\n  kb:paraphrses ( "A is in" ) .\n'},
        "f.ttl", 6, 3, "unknown kbsync term kb:paraphrses", "did you mean kb:paraphrases?"),
    "contradiction across formats": (
        {"a.yaml": REL + FACT + "    object: B\n",
         "b.ttl": TTL + 'ex:A rdfs:label "A" ;\n  wdt:P17 "C" .\n'},
        "b.ttl", 6, 3, "contradiction: 'A/P17' is 'C' here but 'B' at ", None),
    "empty literal object": (
        {"r.yaml": REL, "f.ttl": TTL + 'ex:A rdfs:label "A" ;\n  wdt:P17 "" .\n'}, "f.ttl", 6, 3,
        "must not be empty", None),
    "remote json-ld context": (
        {"f.jsonld": json.dumps({"@context": "https://schema.org/"})}, "f.jsonld", None, None,
        "external context 'https://schema.org/'", "inline the context"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error(name, write_files, tmp_path):
    files, bad_file, line, column, message, hint = CASES[name]
    folder = write_files(files)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(FactsError) as info:
        load_knowledge_base(folder)
    err = info.value
    assert message in err.message
    assert err.file == str(folder / bad_file)
    assert (err.line, err.column) == (line, column)
    if hint:
        assert hint in (err.hint or "")
    expected_location = f"{folder / bad_file}" + (f":{line}" if line else "")
    assert str(err).startswith(expected_location)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_contradiction_names_both_locations(write_files):
    folder = write_files({"a.yaml": REL + FACT + "    object: B\n",
                          "b.yaml": FACT + "    object: C\n"})
    with pytest.raises(FactsError) as info:
        load_knowledge_base(folder)
    assert f"{folder / 'a.yaml'}:6:13" in info.value.message
    assert (info.value.file, info.value.line) == (str(folder / "b.yaml"), 4)


def test_several_problems_report_the_first_and_count(write_files):
    folder = write_files({"f.yaml": REL + 'facts:\n  - {subject: A, relation: P17, object: no}\n'
                                          '  - {subject: B, relation: P17, object: ""}\n'})
    with pytest.raises(FactsError) as info:
        load_knowledge_base(folder)
    assert info.value.line == 4 and "(1 more problem in this file)" in info.value.message


@pytest.mark.parametrize("path, message", [("missing", "no such file or directory"),
                                           ("notes.txt", "unsupported fact file type")])
def test_bad_paths(path, message, write_files):
    folder = write_files({"notes.txt": "hello"})
    with pytest.raises(FactsError, match=message):
        load_knowledge_base(folder / path)


def test_error_json_shape(write_files):
    folder = write_files({"f.yaml": REL + FACT + "    object: no\n"})
    with pytest.raises(FactsError) as info:
        load_knowledge_base(folder)
    data = info.value.to_json()
    assert data["error"] == "FactsError" and data["exit_code"] == 1
    assert (data["file"], data["line"], data["column"]) == (str(folder / "f.yaml"), 6, 13)
