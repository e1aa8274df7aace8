"""What one fact file contributes, with where each item was defined.

Readers (YAML, RDF) return a FileContent; the loader merges them and uses the
locations to point at both definitions when two files disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from kbsync.errors import FactsError
from kbsync.facts.schema import Fact, Relation

__all__ = ["Location", "FileContent"]


@dataclass(frozen=True)
class Location:
    file: str
    line: int | None = None
    column: int | None = None
    # Where individual keys of the item sit (YAML knows; RDF mostly does not).
    fields: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def of(self, name: str) -> Location:
        """The location of one key of this item, or of the item itself."""
        return self.fields.get(name, self)

    def __str__(self) -> str:
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text

    def error(self, message: str, hint: str | None = None) -> FactsError:
        return FactsError(message, file=self.file, line=self.line, column=self.column, hint=hint)


@dataclass
class FileContent:
    relations: list[tuple[Relation, Location]] = field(default_factory=list)
    facts: list[tuple[Fact, Location]] = field(default_factory=list)
