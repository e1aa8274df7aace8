"""YAML fact files: read with line numbers, report errors at file:line, write canonically.

PyYAML's safe_load loses positions, so documents are composed into nodes first
(every node has a start mark) and constructed from those nodes; pydantic's error
`loc` paths are then mapped back to the node they came from.

Fact files take a fast path: the data is built straight from libyaml's events, with the
same refusals (aliases, nesting, node count, duplicate keys) but no nodes and no index
of positions, and the models are validated from it. Anything the events or validation
refuse is read again by the position-keeping path, which reports it at file:line, so
both paths accept the same files and give the same facts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from kbsync.errors import FactsError
from kbsync.facts.schema import Fact, Name, Relation, Template, Text
from kbsync.facts.source import FileContent, Location, gc_paused, read_text_file
from kbsync.facts.yaml_document import YamlDocument, _Path
from kbsync.facts.yaml_dump import dump_yaml, kb_to_yaml
from kbsync.facts.yaml_report import _yaml_type, validation_error

__all__ = ["YamlDocument", "parse_yaml", "read_yaml_file", "validation_error",
           "read_yaml_facts", "parse_yaml_facts", "dump_yaml", "kb_to_yaml"]

# libyaml's loader composes ~15x faster than the pure-Python one and keeps the same marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Limits on what a fact file or kbsync.yaml may be; both are refused with file:line before
# anything is built. Real files nest 5 deep at most; 64 keeps the walk and pydantic far
# from Python's recursion limit (libyaml itself stops at 1000). A fact is ~7 nodes, so
# the node cap leaves room for some 250,000 facts in one file.
MAX_DEPTH = 64
MAX_NODES = 2_000_000


def parse_yaml(text: str, file: str) -> YamlDocument:
    with gc_paused():
        return _parse_yaml(text, file)


def _parse_yaml(text: str, file: str) -> YamlDocument:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(file, None)
        doc = YamlDocument(file, None)
        try:
            _index(root, (), doc, set())
        except _AliasFound as found:
            raise _alias_error(text, file, found.node) from None
        doc.data = loader.construct_document(root)
        return doc
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(err, file, text) from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path | str) -> YamlDocument:
    path = Path(path)
    text = read_text_file(path)
    return parse_yaml(text, str(path))


def _syntax_error(err: yaml.MarkedYAMLError, file: str, text: str) -> FactsError:
    mark = err.problem_mark or err.context_mark
    problem = err.problem or "invalid YAML"
    message = f"invalid YAML: {problem}"
    if err.context:
        message += f" ({err.context}"
        if err.context_mark is not None and mark is not err.context_mark:
            message += f" started at line {err.context_mark.line + 1}"
        message += ")"
    hint = "check indentation, colons and quotes on this line and the one before"
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]:
        hint = "YAML does not allow tabs for indentation; use spaces"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return FactsError(message, file=file, line=line, column=column, hint=hint)


class _AliasFound(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


def _visit(node: yaml.Node, depth: int, file: str, seen: set[int]) -> None:
    # The composer hands back the anchored node for every `*alias`, so a node met twice is
    # an alias. Aliases are refused, not followed: nested ones multiply (6 levels of 10
    # aliases = a million paths from 400 bytes), and a recursive one never ends.
    if id(node) in seen:
        raise _AliasFound(node)
    seen.add(id(node))
    if len(seen) > MAX_NODES or depth > MAX_DEPTH:
        raise _limit_error(node, file, too_deep=depth > MAX_DEPTH)


def _index(node: yaml.Node, path: _Path, doc: YamlDocument, seen: set[int]) -> None:
    """Record the node behind every path, visiting each node once."""
    _visit(node, len(path), doc.file, seen)
    doc.values[path] = node
    if isinstance(node, yaml.MappingNode):
        names: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if name in names:
                first = names[name].start_mark.line + 1
                raise FactsError(f"duplicate key `{name}` (first defined at line {first})",
                                 file=doc.file, line=key_node.start_mark.line + 1,
                                 column=key_node.start_mark.column + 1,
                                 hint="YAML keeps only the last one; remove or rename one of them")
            names[name] = key_node
            doc.keys[path + (name,)] = key_node
            _visit(key_node, len(path) + 1, doc.file, seen)
            _index(value_node, path + (name,), doc, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (str(i),), doc, seen)


def _limit_error(node: yaml.Node, file: str, *, too_deep: bool) -> FactsError:
    mark = node.start_mark
    if too_deep:
        message, hint = (f"nested more than {MAX_DEPTH} levels deep",
                         "fact files and kbsync.yaml need only a few levels; check the brackets")
    else:
        message, hint = (f"more than {MAX_NODES:,} YAML nodes in one file",
                         "split the facts over several files in the facts folder")
    return FactsError(message, file=file, line=mark.line + 1, column=mark.column + 1, hint=hint)


def _alias_error(text: str, file: str, anchored: yaml.Node) -> FactsError:
    """Points at the first `*alias` (found by a second, event-only pass: error path only)."""
    mark, name = anchored.start_mark, None
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                mark, name = event.start_mark, event.anchor
                break
    finally:
        loader.dispose()
    what = f"`*{name}`" if name else "alias"
    return FactsError(f"YAML alias {what}: anchors and aliases (&name / *name) are not "
                      "allowed here", file=file, line=mark.line + 1, column=mark.column + 1,
                      hint="write the value out in full at each place it is used")


# ---------------------------------------------------------------- fast path

class _Slow(Exception):
    """The fast path met something only the position-keeping path may judge and report."""


_STR, _MAP, _SEQ, _MERGE = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:map",
                            "tag:yaml.org,2002:seq", "tag:yaml.org,2002:merge")


def fast_data(text: str) -> Any:
    """The document's data as parse_yaml(text).data gives it, built from libyaml's events
    (no nodes, no index of positions); _Slow where parse_yaml would refuse the text
    (syntax, an alias, nesting, node count, a duplicate key or anchor, several documents)
    or where SafeConstructor does more than build dicts, lists and scalars (tags such as
    !!set, merge keys, keys that are not scalars)."""
    loader = _Loader(text)
    try:
        if loader.yaml_path_resolvers:   # tags that depend on the path: the composer's
            raise _Slow
        return _from_events(loader)
    except _Slow:
        raise
    except Exception:   # syntax, constructor errors, ...: parse_yaml's to raise as it does
        raise _Slow from None
    finally:
        loader.dispose()


def _from_events(loader: Any) -> Any:
    """One pass over the events with parse_yaml's checks (the composer's, _index's and
    _visit's): an AliasEvent is refused outright, so nothing is ever shared."""
    get = loader.get_event
    Scalar, MapStart, MapEnd = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.MappingEndEvent
    SeqStart, SeqEnd = yaml.SequenceStartEvent, yaml.SequenceEndEvent
    count, max_nodes, max_depth = 0, MAX_NODES, MAX_DEPTH
    anchors: set[str] = set()
    plain_tags: dict[str, str] = {}     # a plain scalar's implicit tag depends on its text

    def scalar(event: Any) -> Any:
        tag = event.tag
        if tag is None or tag == "!":    # as the composer resolves it
            if not event.implicit[0]:
                return event.value       # quoted: text
            tag = plain_tags.get(event.value)
            if tag is None:
                tag = plain_tags[event.value] = loader.resolve(yaml.ScalarNode, event.value,
                                                               event.implicit)
        if tag == _STR:
            return event.value
        if tag == _MERGE:
            raise _Slow
        # int, bool, null, float, dates: SafeConstructor's own constructors
        return loader.construct_object(yaml.ScalarNode(tag, event.value, event.start_mark,
                                                       event.end_mark, event.style))

    def node(event: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > max_nodes or depth > max_depth:
            raise _Slow
        if event.anchor is not None:     # unused anchors are allowed, duplicates are not
            if event.anchor in anchors:
                raise _Slow
            anchors.add(event.anchor)
        kind = type(event)
        if kind is Scalar:
            return scalar(event)
        if kind is MapStart and event.tag in (None, "!", _MAP):
            data, names = {}, set()
            while True:
                key = get()
                if type(key) is MapEnd:
                    return data
                if type(key) is not Scalar or key.value in names:   # names: _index's check
                    raise _Slow
                names.add(key.value)
                name = node(key, depth + 1)
                data[name] = node(get(), depth + 1)
        if kind is SeqStart and event.tag in (None, "!", _SEQ):
            items = []
            while True:
                item = get()
                if type(item) is SeqEnd:
                    return items
                items.append(node(item, depth + 1))
        raise _Slow                      # an alias, or a collection with another tag

    get()                                # StreamStartEvent
    if type(get()) is yaml.StreamEndEvent:
        return None                      # an empty file (comments only)
    root = node(get(), 0)                # after DocumentStartEvent
    get()                                # DocumentEndEvent
    if type(get()) is not yaml.StreamEndEvent:
        raise _Slow                      # a second document
    return root


# ---------------------------------------------------------------- fact files

class _RelationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    label: Text
    templates: list[Template]


class _FactFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    version: Literal[1] = 1
    relations: dict[Name, _RelationBody] = {}
    facts: list[Fact] = []


def read_yaml_facts(path: Path | str, *, positions: bool = False) -> FileContent:
    path = Path(path)
    return parse_yaml_facts(read_text_file(path), str(path), positions=positions)


def parse_yaml_facts(text: str, file: str = "<yaml>", *, positions: bool = False
                     ) -> FileContent:
    """The file's relations and facts. `positions`: every item's file:line (the
    position-keeping path throughout); otherwise the fast path, whose locations name only
    the file: a bad file is still refused at file:line, and `positioned` gives the
    lines when the merge needs them (two files disagree)."""
    def slow() -> FileContent:
        return _facts_from(parse_yaml(text, file))

    if positions:
        return slow()
    with gc_paused():
        try:
            content = _fast_facts(fast_data(text), file)
        except _Slow:
            return slow()       # raises the error at its line (or reads what it accepts)
    content.positioned = slow
    return content


def _fast_facts(data: Any, file: str) -> FileContent:
    if data is None:
        return FileContent()
    if not isinstance(data, dict):
        raise _Slow
    try:
        parsed = _FactFile.model_validate(data)
        here = Location(file)
        relations = [(Relation(id=rid, label=body.label, templates=list(body.templates)), here)
                     for rid, body in parsed.relations.items()]
    except ValidationError:
        raise _Slow from None
    return FileContent(relations=relations, facts=[(fact, here) for fact in parsed.facts])


def _facts_from(doc: YamlDocument) -> FileContent:
    if doc.data is None:
        return FileContent()
    if not isinstance(doc.data, dict):
        raise doc.location(()).error(
            f"a fact file must be a mapping, got {_yaml_type(doc.data)}",
            hint="start the file with `version: 1`, then `relations:` and/or `facts:`")
    try:
        parsed = _FactFile.model_validate(doc.data)
    except ValidationError as err:
        raise validation_error(err, doc, _FactFile) from None
    content = FileContent()
    for rid, body in parsed.relations.items():
        where = ("relations", rid)
        try:
            relation = Relation(id=rid, label=body.label, templates=list(body.templates))
        except ValidationError as err:
            raise validation_error(err, doc, _FactFile, prefix=where) from None
        content.relations.append((relation, doc.location(where, key=True)))
    for i, fact in enumerate(parsed.facts):
        content.facts.append((fact, _fact_location(doc, i)))
    return content


def _fact_location(doc: YamlDocument, i: int) -> Location:
    fields = {name: doc.location(("facts", i, name))
              for name in ("subject", "relation", "object", "id", "prompt")
              if ("facts", str(i), name) in doc.values}
    base = doc.location(("facts", i))
    return Location(base.file, base.line, base.column, fields)
