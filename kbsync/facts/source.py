"""What one fact file contributes, with where each item was defined.

Readers (YAML, RDF) return a FileContent; the loader merges them and uses the
locations to point at both definitions when two files disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


def read_text_file(path: Path) -> str:
    """A fact file's text, or a FactsError naming the file (not UTF-8, unreadable)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FactsError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=str(path),
                         hint="save the file as UTF-8") from None
    except OSError as err:
        raise FactsError(f"cannot read file: {err.strerror}", file=str(path)) from None
