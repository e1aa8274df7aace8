"""Writing fact files canonically: `version: 1`, relations by id, then facts."""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from kbsync.facts.schema import Fact, KnowledgeBase, Relation

class _Dumper(yaml.SafeDumper):
    # Indent list items under their key ("facts:\n  - subject: ..."), as people write it.
    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def dump_yaml(relations: Iterable[Relation] = (), facts: Iterable[Fact] = (),
              header: str | None = None) -> str:
    """A fact file: `version: 1`, then relations by id, then facts in the given order."""
    doc: dict[str, Any] = {"version": 1}
    rels = {r.id: {"label": r.label, "templates": list(r.templates)}
            for r in sorted(relations, key=lambda r: _natural(r.id))}
    if rels:
        doc["relations"] = rels
    fact_list = [f.model_dump(mode="json", exclude_defaults=True) for f in facts]
    if fact_list:
        doc["facts"] = fact_list
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


def kb_to_yaml(kb: KnowledgeBase, header: str | None = None) -> str:
    facts = sorted(kb.facts.values(), key=lambda f: f.key)
    return dump_yaml(kb.relations.values(), facts, header)


def _natural(rid: str) -> tuple:
    # P17 before P103: numeric order for Wikidata ids, text order otherwise.
    return (0, int(rid[1:]), rid) if rid[:1] == "P" and rid[1:].isdigit() else (1, 0, rid)
