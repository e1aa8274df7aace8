"""RDF parsing without the network: JSON-LD must inline its contexts (checked before
parsing), and an audit hook refuses any network access from the parsing thread while
rdflib runs (rdflib's own security advice for untrusted input)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from typing import Any, Iterator

from kbsync.errors import FactsError

# JSON-LD facts nest ~8 deep (@graph, node, property, @list, value); the cap keeps
# json.loads, the reference scan below and rdflib's recursive parser off Python's
# recursion limit, whose RecursionError would otherwise end kbsync in a traceback.
MAX_JSON_DEPTH = 64
_NESTING_HINT = "JSON-LD facts need only a few levels; check the brackets"


def check_json_ld(text: str, file: str) -> None:
    _check_depth(text, file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FactsError(f"invalid JSON-LD: {err.msg}", file=file, line=err.lineno,
                         column=err.colno, hint="fix the JSON syntax at this position") from None
    except RecursionError:  # only under a deep call stack; _check_depth runs first
        raise FactsError("JSON-LD nested too deeply", file=file, hint=_NESTING_HINT) from None
    ref = _remote_reference(data)
    if ref is not None:
        raise FactsError(f"JSON-LD refers to an external context {ref!r}; kbsync never "
                         "fetches contexts", file=file,
                         hint="inline the context as a JSON object under \"@context\"")


# A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting beyond MAX_JSON_DEPTH at its line: one regex pass over the text,
    before anything recursive sees it."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()[0]
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                raise FactsError(f"JSON-LD nested more than {MAX_JSON_DEPTH} levels deep",
                                 file=file, line=line, hint=_NESTING_HINT)
        elif token in "]}":
            depth -= 1


def _remote_reference(value: Any) -> str | None:
    """The first `@context`/`@import` that names a document instead of inlining it."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "@import" and isinstance(item, str):
                return item
            if key == "@context":
                for entry in item if isinstance(item, list) else [item]:
                    if isinstance(entry, str):
                        return entry
            found = _remote_reference(item)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _remote_reference(item)
            if found is not None:
                return found
    return None


_guard = threading.local()
_hook_installed = False
_NETWORK_EVENTS = {"urllib.Request", "socket.connect", "socket.getaddrinfo",
                   "http.client.connect"}


def _audit(event: str, args: tuple) -> None:
    if event in _NETWORK_EVENTS and getattr(_guard, "offline", False):
        raise FactsError(f"network access blocked while parsing RDF ({event} {args[:1]!r})",
                         hint="fact files must be self-contained")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Refuse network access from this thread while rdflib parses."""
    global _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed; one cheap hook, a flag per thread
        sys.addaudithook(_audit)
        _hook_installed = True
    _guard.offline = True
    try:
        yield
    finally:
        _guard.offline = False
