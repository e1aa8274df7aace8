"""Load a knowledge base from a file or a folder of fact files in any supported format.

Files are read in sorted path order, then merged: a relation may be defined in one file
and used in another; the same fact may appear twice only if both copies are identical.
All checks run before anything is returned, so a bad file never yields a partial KB.

A knowledge base is parsed once per content: loading the same bytes again (apply loads
the facts its plan step loaded) returns the knowledge base already built, after reading
and hashing the files, never a stale one.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Callable

from kbsync.errors import FactsError
from kbsync.facts import rdf_offline, yaml_io
from kbsync.facts.rdf_io import RDF_FORMATS, parse_rdf, read_rdf
from kbsync.facts.schema import Fact, KnowledgeBase, Relation
from kbsync.facts.source import FileContent, Location, decode_text, gc_paused, read_file_bytes
from kbsync.facts.yaml_io import parse_yaml_facts, read_yaml_facts

__all__ = ["FACT_SUFFIXES", "is_fact_file", "fact_files", "load_knowledge_base", "merge",
           "parse_fact_text", "clear_cache"]

_READERS: dict[str, Callable[[Path], FileContent]] = {
    ".yaml": read_yaml_facts, ".yml": read_yaml_facts,
    **{suffix: read_rdf for suffix in RDF_FORMATS},
}
FACT_SUFFIXES = tuple(_READERS)


def is_fact_file(path: Path | str) -> bool:
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in _READERS


def fact_files(path: Path | str) -> list[Path]:
    """The fact files under `path` (itself if a file), hidden files and folders skipped."""
    path = Path(path)
    if not path.exists():
        raise FactsError("no such file or directory", file=str(path),
                         hint="create it, or point `facts:` in kbsync.yaml at your facts folder")
    if path.is_file():
        if Path(path.name).suffix.lower() not in _READERS:
            raise FactsError(f"unsupported fact file type {path.suffix!r}", file=str(path),
                             hint=f"use one of {', '.join(FACT_SUFFIXES)}")
        return [path]
    files = [p for p in path.rglob("*") if p.is_file() and is_fact_file(p)
             and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def parse_fact_text(text: str, file: str) -> FileContent:
    """One fact file's content from its text; the format follows the name's suffix."""
    suffix = Path(file).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml_facts(text, file)
    return parse_rdf(text, RDF_FORMATS[suffix], file)


# (files and their digests, reader limits) -> the knowledge base they gave, for the last
# load only: a plan and the apply after it load the same facts.
_last: tuple[tuple, KnowledgeBase] | None = None


def load_knowledge_base(path: Path | str, *, cache: bool = True) -> KnowledgeBase:
    """The merged knowledge base of the fact files under `path`. `cache`: when every file
    has the same bytes as at the previous load, return that load's knowledge base (a
    value: frozen models) instead of parsing again."""
    global _last
    files = [(str(f), read_file_bytes(f)) for f in fact_files(path)]
    key = (tuple((name, hashlib.sha256(data).digest()) for name, data in files),
           (yaml_io.MAX_DEPTH, yaml_io.MAX_NODES, rdf_offline.MAX_JSON_DEPTH))
    last = _last
    if cache and last is not None and last[0] == key:
        return last[1]
    with gc_paused():
        contents = [parse_fact_text(decode_text(data, name), name) for name, data in files]
        del files
        kb = merge(contents)
    if cache:
        _last = (key, kb)
    return kb


def clear_cache() -> None:
    """Forget the last loaded knowledge base (benchmarks time a load from scratch)."""
    global _last
    _last = None


def merge(contents: list[FileContent]) -> KnowledgeBase:
    """One knowledge base from the files' contents. A content read on the fast path
    (locations without lines) that disagrees with another is read again with positions,
    so the error names file:line for both definitions."""
    try:
        return _merge(contents)
    except FactsError:
        if not any(content.positioned for content in contents):
            raise
        located = [content.positioned() if content.positioned else content
                   for content in contents]
        try:
            _merge(located)
        except FactsError as err:
            raise err from None
        raise   # not reached: the same facts meet the same problem


def _merge(contents: list[FileContent]) -> KnowledgeBase:
    relations: dict[str, tuple[Relation, Location]] = {}
    for content in contents:
        for relation, location in content.relations:
            _add_relation(relations, relation, location)
    facts: dict[str, tuple[Fact, Location]] = {}
    for content in contents:
        for fact, location in content.facts:
            _check_relation(fact, location, relations)
            _add_fact(facts, fact, location)
    return KnowledgeBase(relations={k: r for k, (r, _) in relations.items()},
                         facts={k: f for k, (f, _) in facts.items()})


def _add_relation(seen: dict[str, tuple[Relation, Location]], relation: Relation,
                  location: Location) -> None:
    if relation.id not in seen:
        seen[relation.id] = (relation, location)
        return
    first, where = seen[relation.id]
    if first != relation:
        raise location.error(
            f"relation {relation.id} is defined twice with different content "
            f"(also at {where})", hint="keep one definition, or make both identical")


def _check_relation(fact: Fact, location: Location,
                    relations: dict[str, tuple[Relation, Location]]) -> None:
    if fact.relation is None or fact.relation in relations:    # None: a prompt fact
        return
    close = difflib.get_close_matches(fact.relation, list(relations), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    hint += ("define it under `relations:` (label and templates), e.g. in relations.yaml"
             if relations else "no relations are defined: add a `relations:` block "
             "(e.g. relations.yaml) with a label and templates for it")
    raise location.of("relation").error(
        f"fact {fact.key!r} uses unknown relation {fact.relation!r}", hint=hint)


def _add_fact(seen: dict[str, tuple[Fact, Location]], fact: Fact, location: Location) -> None:
    if fact.key not in seen:
        seen[fact.key] = (fact, location)
        return
    first, where = seen[fact.key]
    if first.object != fact.object:
        raise location.of("object").error(
            f"contradiction: {fact.key!r} is {fact.object!r} here but {first.object!r} "
            f"at {where.of('object')}",
            hint="a fact key (subject/relation, or id) can have one object; delete one, "
                 "or give each an explicit `id` if the relation really has several objects")
    if first != fact:
        raise location.error(
            f"fact {fact.key!r} is defined twice with different details (also at {where})",
            hint="keep one definition, or make both identical")
