"""file:line for RDF terms. rdflib keeps no source positions, so the text is indexed by
the names written in it and a term is found through the forms it can be written in.

Linear in the file: the index is built in one pass, and each lookup is a binary search
in the (sorted) positions of each form, never a scan of every place a predicate is used.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from kbsync.facts.source import Location

if TYPE_CHECKING:
    from rdflib import Graph


# Written names of terms: <iri>, "quoted" (JSON-LD), prefix:local. Literals are matched
# as a whole so that a colon inside a string is not taken for a prefixed name.
_TOKEN = re.compile(r'<[^<>"\s]*>|"(?:[^"\\\n]|\\.)*"|[A-Za-z][\w\-.]*:[^\s;,()\[\]{}"\'<>]*'
                    r'|:[^\s;,()\[\]{}"\'<>]+')


class Locator:
    """Best-effort file:line for RDF terms: rdflib keeps no positions, so the text is
    indexed once by the names written in it, and terms are looked up by their forms."""

    def __init__(self, text: str, file: str, graph: Graph):
        self.file = file
        self.namespaces = [(p, str(ns)) for p, ns in graph.namespaces()]
        self.index: dict[str, list[tuple[int, int]]] = {}
        for number, line in enumerate(text.splitlines()):
            for match in _TOKEN.finditer(line):
                token = match.group()
                if not token.startswith(("<", '"')):
                    token = token.rstrip(".")  # "ex:a." ends a statement
                self.index.setdefault(token, []).append((number, match.start()))

    def forms(self, term: Any) -> list[str]:
        from rdflib import URIRef

        if not isinstance(term, URIRef):
            return []
        iri = str(term)
        names = [f"{p}:{iri[len(ns):]}" for p, ns in self.namespaces
                 if ns and iri.startswith(ns) and len(iri) > len(ns)]
        return [f"<{iri}>", f'"{iri}"', *names, *(f'"{name}"' for name in names)]

    def find(self, *terms: Any) -> Location:
        """Where the first term is written, then the next term at or after it, and so on
        (subject, then predicate: the line of a triple)."""
        start, found = (0, 0), None
        for term in terms:
            forms = self.forms(term)
            if not forms:  # blank nodes and literals have no written name
                continue
            first = None
            for form in forms:
                positions = self.index.get(form)
                if positions:   # in text order, so the first at or after `start` is found
                    at = bisect_left(positions, start)
                    if at < len(positions) and (first is None or positions[at] < first):
                        first = positions[at]
            if first is None:
                break
            found = start = first
        if found is None:
            return Location(self.file)
        return Location(self.file, found[0] + 1, found[1] + 1)


class NoPositions:
    """A Locator for the fast path: every term is somewhere in the file. The reader is
    run again with a Locator when it has an error to report."""

    def __init__(self, file: str):
        self.here = Location(file)

    def find(self, *terms: Any) -> Location:
        return self.here
