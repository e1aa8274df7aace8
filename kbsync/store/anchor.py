"""The ledger's tail anchor: `ledger.anchor`, next to `ledger.db` (see kbsync.store.ledger).

Anchored: a hash chain alone cannot show rows cut off its end, or its newest row
rewritten with a fresh hash: whoever can write the file can rebuild the chain. So the
ledger's head is kept outside it too, in `ledger.anchor` next to the database (written
by kbsync.store.atomic: temp file, fsync, rename, fsync dir), as canonical JSON
{"seq", "row_hash", "prev_seq", "prev_hash"}. Each transaction, under SQLite's write lock
(so concurrent writers anchor in order), writes it twice: just before its COMMIT
*pending* (seq/row_hash = the head being committed, prev = the head before it), and
right after the COMMIT *settled* (prev = seq: the committed head alone). The ledger
must end exactly at the anchored head, or, while pending, at prev (killed before the
COMMIT). `verify` names any other end: rows removed from the end, the newest row
rewritten, rows appended by something other than kbsync, a missing or unreadable
anchor. Every write checks the anchor at BEGIN and refuses to go on from a ledger that
no longer matches it, so kbsync never re-anchors a tampered ledger. Snapshot manifests
also keep the head (`ledger_head`, checked by `verify(anchors)`).
What it cannot do: whoever rewrites BOTH the database and the anchor file consistently
(or deletes both) can still truncate or forge undetected: the anchor raises the bar from
"edit one SQLite file" to "edit two files consistently", nothing more. A kill between
the two anchor writes of a transaction leaves it pending, and then that one newest
transaction could be removed unnoticed, until the next write settles the anchor. A
ledger of schema 1 (before anchoring) is anchored at its head, as it is, when opened.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from kbsync.errors import IntegrityError
from kbsync.store.atomic import atomic_write_text
from kbsync.store.canonical import canonical_json, is_sha256

ANCHOR_SUFFIX = ".anchor"   # ledger.db -> ledger.anchor


class AnchorMixin:
    """The anchor half of kbsync.store.ledger.Ledger: needs self.path, self.anchor_path,
    self.db, self._head() and self._row_hash_at(seq)."""

    def anchor(self) -> dict[str, Any] | None:
        """The anchor file's content (module doc), or None when there is none."""
        try:
            text = self.anchor_path.read_text(encoding="utf-8")
            anchor = json.loads(text)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise IntegrityError(f"ledger anchor {self.anchor_path} is unreadable: {exc}") from None
        if not _is_anchor(anchor):
            raise IntegrityError(f"ledger anchor {self.anchor_path} is not an anchor: "
                                 f"{text[:120]!r}")
        return anchor

    def _begin_anchored(self, check: bool) -> tuple[int, str]:
        """The head at BEGIN, after checking that it is the anchored one."""
        problem = self._anchor_problem() if check else None
        if problem:
            raise IntegrityError(f"ledger {self.path} no longer matches its anchor, so kbsync "
                                 f"will not write to it: {problem}",
                                 hint="`kbsync audit verify` lists every problem")
        return self._head()

    def _write_anchor(self, before: tuple[int, str]) -> tuple[int, str] | None:
        """Before COMMIT: anchor the head being committed, with `before` as pending prev.
        Returns that head when it is pending (rows were appended), else None."""
        head = self._head()
        if head != before:
            self._store_anchor(head, before)
            return head
        if not self.anchor_path.exists():      # a new ledger: anchored at genesis
            self._store_anchor(head, head)
        return None

    def _settle_anchor(self, head: tuple[int, str]) -> None:
        """After COMMIT: the anchor names `head` alone, so the rows just committed cannot be
        removed as if they had never been committed. Under the write lock again, and only if
        no writer came in between (its own anchor supersedes this one). A failure here
        leaves the anchor pending, which `verify` accepts: the rows are committed."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return
        try:
            anchor = self.anchor()
            if anchor and (anchor["seq"], anchor["row_hash"]) == head == self._head():
                self._store_anchor(head, head)
        except (OSError, IntegrityError):
            pass
        finally:
            conn.execute("ROLLBACK")

    def _store_anchor(self, head: tuple[int, str], prev: tuple[int, str]) -> None:
        atomic_write_text(self.anchor_path, canonical_json(
            {"seq": head[0], "row_hash": head[1], "prev_seq": prev[0], "prev_hash": prev[1]})
            + "\n")

    def _anchor_problem(self) -> str | None:
        """Why the ledger does not end at its anchored head (module doc), or None."""
        try:
            anchor = self.anchor()
        except IntegrityError as exc:
            return exc.message
        if anchor is None:
            return (f"ledger anchor {self.anchor_path.name} is missing: the ledger's end "
                    f"cannot be checked (it was deleted, or the ledger copied without it)")
        head = self._head()
        if head in ((anchor["seq"], anchor["row_hash"]), (anchor["prev_seq"], anchor["prev_hash"])):
            return None
        seq, want = anchor["seq"], anchor["row_hash"]
        have = self._row_hash_at(seq)
        if have is None:
            return (f"ledger anchor: seq {seq} ({want[:12]}) is no longer in the ledger, which "
                    f"ends at seq {head[0]}: rows were removed from its end")
        if have != want:
            return (f"ledger anchor: seq {seq} has row_hash {have[:12]}, anchored as "
                    f"{want[:12]}: the row was rewritten")
        return (f"ledger anchor: rows {seq + 1}..{head[0]} come after the anchored head: they "
                f"were written by something other than kbsync")


def _is_anchor(value: Any) -> bool:
    return (isinstance(value, dict)
            and all(type(value.get(k)) is int and value[k] >= 0 for k in ("seq", "prev_seq"))
            and all(is_sha256(value.get(k)) for k in ("row_hash", "prev_hash")))
