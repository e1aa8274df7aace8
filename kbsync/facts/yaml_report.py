"""Pydantic validation errors on a YAML document, reported as a FactsError at the line
of the key or value they concern, with a hint."""

from __future__ import annotations

import datetime
import difflib
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kbsync.errors import FactsError
from kbsync.facts.yaml_document import YamlDocument
from kbsync.text import UNSAFE_HINT

def validation_error(err: ValidationError, doc: YamlDocument, model: type[BaseModel],
                     prefix: tuple = ()) -> FactsError:
    """The first problem (in file order) as a FactsError at its line."""
    problems = []
    for item in err.errors(include_url=False):
        loc = prefix + tuple(p for p in item["loc"] if p != "[key]")
        on_key = item["type"] == "extra_forbidden" or "[key]" in item["loc"]
        location = doc.location(loc, key=on_key)
        # A misspelt key also shows up as a missing one; the typo is the better report.
        rank = (item["type"] == "missing", location.line or 0, location.column or 0)
        problems.append((rank, loc, item, location))
    problems.sort(key=lambda p: p[0])
    _, loc, item, location = problems[0]
    if "[key]" in item["loc"]:
        message, hint = _describe_key(item, loc, doc)
    else:
        message, hint = _describe(item, loc, doc, model)
    if len(problems) > 1:
        message += f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} in this file)"
    return location.error(message, hint)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) or str(part).isdigit() else (
            f".{part}" if text else str(part))
    return text or "document"


def _describe(item: dict, loc: tuple, doc: YamlDocument, model: type[BaseModel]
              ) -> tuple[str, str | None]:
    kind, value = item["type"], item.get("input")
    name = next((str(p) for p in reversed(loc) if not isinstance(p, int)
                 and not str(p).isdigit()), "value")
    where = _dotted(loc)
    if kind == "missing":
        return f"{_dotted(loc[:-1])}: missing required key `{name}`", f"add `{name}: ...`"
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc)
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"unknown key `{name}`", hint + f"allowed keys here: {', '.join(allowed)}"
    if kind == "string_type":
        return _not_text(where, name, value, doc.node(loc))
    if kind == "value_error":
        message = item['msg'].removeprefix('Value error, ')
        hint = UNSAFE_HINT if "control character" in message else _value_hint(name)
        return f"{where}: {message}", hint
    if kind in ("list_type", "tuple_type"):
        return (f"{where}: expected a list, got {_yaml_type(value)}",
                f"write `{name}: [a, b]` or one `- item` per line")
    if kind in ("dict_type", "model_type"):
        return (f"{where}: expected a mapping (key: value lines), got {_yaml_type(value)}", None)
    if kind == "literal_error":
        return f"{where}: {item['msg']} (got {value!r})", None
    if kind in ("int_type", "float_type", "bool_type", "int_parsing", "float_parsing"):
        return f"{where}: {item['msg'].lower()} (got {value!r})", None
    return f"{where}: {item['msg']}", None


def _describe_key(item: dict, loc: tuple, doc: YamlDocument) -> tuple[str, str | None]:
    node = doc.keys.get(tuple(str(p) for p in loc))
    raw = node.value if isinstance(node, yaml.ScalarNode) else str(loc[-1])
    if item["type"] == "string_type":
        return (f"{_dotted(loc[:-1])}: key `{raw}` is read by YAML as "
                f"{_yaml_type(item.get('input'))}, not as text", f'quote it: "{raw}":')
    return (f"{_dotted(loc[:-1])}: key `{raw}`: {item['msg'].removeprefix('Value error, ')}",
            None)


def _not_text(where: str, name: str, value: Any, node: yaml.Node | None
              ) -> tuple[str, str | None]:
    if value is None:
        return (f"{where}: is empty",
                f"write a value after `{name}:` (quote it if it is meant to be empty text)")
    raw = node.value if isinstance(node, yaml.ScalarNode) else repr(value)
    if isinstance(value, (bool, int, float, datetime.date)):
        return (f"{where}: YAML reads `{raw}` as {_yaml_type(value)} {value!r}, not as text",
                f"quote it: {name}: \"{raw}\"")
    return f"{where}: expected text, got {_yaml_type(value)}", None


def _value_hint(name: str) -> str | None:
    return {"object": "give the fact an object, e.g. `object: France`",
            "subject": "give the fact a subject, e.g. `subject: Eiffel Tower`"}.get(name)


def _yaml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return "text" if isinstance(value, str) else type(value).__name__


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at loc[:-1] (for "did you mean" hints)."""
    current: Any = model
    for part in loc[:-1]:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp
