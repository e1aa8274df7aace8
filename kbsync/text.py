"""Characters that must never reach a reviewer's terminal as they are.

Fact text ends up in plan output, the ledger and SQLite keys. C0/C1 control characters
(ESC starts terminal sequences that erase or move lines; NUL ends SQLite keys early),
line and paragraph separators, and bidi embeddings/overrides/isolates (which reorder
what a reviewer reads, "Trojan Source") are refused in facts and escaped when printed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["first_unsafe", "describe_char", "printable", "nfc", "UNSAFE_HINT"]

# C0, DEL, C1; U+2028/2029 separators; bidi embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Printing also escapes the invisible bidi marks (LRM, RLM, ALM): harmless in a fact,
# but a reviewer must see that they are there.
_ESCAPED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                      "\u200e\u200f\u061c]")

UNSAFE_HINT = ("invisible characters often come along with pasted text; retype the value "
               "or delete the character at this position")


def nfc(text: str) -> str:
    """NFC form, so that composed and decomposed spellings are one key."""
    return unicodedata.normalize("NFC", text)


def first_unsafe(text: str) -> str | None:
    """The first character of `text` that facts may not contain, or None."""
    found = _UNSAFE.search(text)
    return found.group() if found else None


# unicodedata has no names for C0/C1 controls; the ones people meet:
_CONTROL_NAMES = {"\x00": "NUL", "\x07": "BELL", "\x08": "BACKSPACE", "\t": "TAB",
                  "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE",
                  "\x7f": "DELETE"}


def describe_char(char: str) -> str:
    """`U+001B (ESCAPE)`-style name for an error message."""
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(char, "control")
    return f"U+{ord(char):04X} ({name})"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with unsafe characters written as escapes (\\x1b, \\u202e), for a terminal."""
    def escape(match: re.Match) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _ESCAPED.sub(escape, str(text))
