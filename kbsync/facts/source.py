"""What one fact file contributes, with where each item was defined.

Readers (YAML, RDF) return a FileContent; the loader merges them and uses the
locations to point at both definitions when two files disagree.

Positions cost more than parsing (a node index, a text scan), so readers take a fast
path that records only the file, and compute positions when there is an error to
report: a reader's own error is raised from its position-keeping path, and a
FileContent carries `positioned`, which the merge calls when two files disagree.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from kbsync.errors import FactsError
from kbsync.facts.schema import Fact, Relation

__all__ = ["Location", "FileContent", "gc_paused", "read_text_file", "read_file_bytes",
           "decode_text"]


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
    # Set by a fast read (locations name only the file): the same content with every
    # item's file:line, computed again from the text. Called on the error path only.
    positioned: Callable[[], FileContent] | None = field(default=None, repr=False,
                                                         compare=False)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a fact file becomes nodes, data and
    models. A 100,000-fact file allocates millions of tracked objects that stay alive;
    each full collection walks all of them, which made a plain libyaml load of such a
    file 4-5x slower than with the collector off. Nothing is lost: a cycle made meanwhile
    is collected once the collector is back on. Reentrant; restores the setting."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def read_text_file(path: Path) -> str:
    """A fact file's text, or a FactsError naming the file (not UTF-8, unreadable)."""
    return decode_text(read_file_bytes(path), str(path))


def read_file_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise FactsError(f"cannot read file: {err.strerror}", file=str(path)) from None


def decode_text(data: bytes, file: str) -> str:
    """UTF-8 bytes as text with universal newlines (as `Path.read_text` reads them)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FactsError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=file,
                         hint="save the file as UTF-8") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text
