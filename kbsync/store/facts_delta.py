"""The applied facts stored incrementally: per snapshot a delta, every FULL_EVERY a full copy.

Two kinds of object, both canonical JSON (kbsync.store.canonical), content-addressed:
- a full copy: a knowledge base's canonical JSON `{"relations": {...}, "facts": {...}}`
  (KnowledgeBase.to_json); its id is the knowledge base's content hash. Format-1
  manifests name only these;
- a delta: `{"format": DELTA_FORMAT, "base": <object id>, "depth": n, "hash": <content
  hash of the result>, "facts": {key: fact}, "removed": [key], "relations": {id:
  relation}, "removed_relations": [id]}`: the facts and relations added or changed and
  the keys removed, against `base`.

Guarantees:
- `read_text` returns the knowledge base's canonical JSON only if it hashes to the hash
  recorded (a full copy: its id; a delta: `hash`), so a lost, damaged or wrong delta
  raises IntegrityError, never a guess;
- reading costs at most FULL_EVERY - 1 deltas and one full copy: `depth` counts the
  deltas down to the full copy, and `put` writes a full copy once it would reach
  FULL_EVERY;
- a delta holds only what changed, so its size is that of the batch, whatever the size of
  the knowledge base.
Knowing nothing of facts themselves, this module works on their canonical JSON dicts.
"""

from __future__ import annotations

import json
from typing import Any

from kbsync.errors import IntegrityError
from kbsync.store.canonical import canonical_json, sha256_hex
from kbsync.store.objects import ObjectStore

DELTA_FORMAT = "kbsync.facts-delta/1"
FULL_EVERY = 64


def changes(old: dict[str, dict], new: dict[str, dict], keys=None) -> dict[str, Any]:
    """{"set": entries of `new` that `old` lacks or holds differently, "removed": keys of
    `old` that `new` lacks}, over `keys` only when given (the caller knows what changed)."""
    keys = set(old) | set(new) if keys is None else set(keys)
    return {"set": {k: new[k] for k in sorted(keys) if k in new and old.get(k) != new[k]},
            "removed": sorted(k for k in keys if k in old and k not in new)}


def put(objects: ObjectStore, text: str, *, base: str | None, base_depth: int,
        facts: dict[str, Any], relations: dict[str, Any]) -> tuple[str, str | None]:
    """Store the knowledge base whose canonical JSON is `text`: a delta against `base`
    (whose depth is `base_depth`; 0 for a full copy) with `facts` and `relations` as
    `changes` gives them, or a full copy where there is no base or the delta chain would
    reach FULL_EVERY. Returns (object id, the base it is a delta of, or None: a full copy)."""
    if base is None or base_depth + 1 >= FULL_EVERY:
        return objects.put_text(text), None
    return objects.put_json({"format": DELTA_FORMAT, "base": base, "depth": base_depth + 1,
                             "hash": sha256_hex(text.encode("utf-8")),
                             "facts": facts["set"], "removed": facts["removed"],
                             "relations": relations["set"],
                             "removed_relations": relations["removed"]}), base


def is_delta(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == DELTA_FORMAT


def depth(objects: ObjectStore, sha: str) -> int:
    """Deltas to read down to the full copy (0: `sha` is one). Reads the object: call it
    only for a manifest with a `facts_base` (a delta, small)."""
    data = json.loads(objects.get_bytes(sha))
    return int(data["depth"]) if is_delta(data) else 0


def read_text(objects: ObjectStore, sha: str) -> str:
    """The canonical JSON of the knowledge base object `sha` stands for (module doc)."""
    deltas: list[dict] = []
    current = sha
    while True:
        raw = objects.get_bytes(current)
        data = json.loads(raw)
        if not is_delta(data):
            break
        if len(deltas) >= FULL_EVERY:   # a forged or looping chain: never read without end
            raise IntegrityError(f"facts delta {sha} is more than {FULL_EVERY} deltas deep")
        deltas.append(data)
        current = data["base"]
    if not deltas:
        return raw.decode("utf-8")      # a full copy: verified by its id
    for delta in reversed(deltas):
        _apply(data, delta)
    text = canonical_json(data)
    if sha256_hex(text.encode("utf-8")) != deltas[0]["hash"]:
        raise IntegrityError(f"facts delta {sha} does not rebuild the knowledge base it "
                             "recorded (its hash differs)",
                             hint="restore .kbsync/objects from a backup")
    return text


def _apply(kb: dict, delta: dict) -> None:
    for part, removed in (("facts", "removed"), ("relations", "removed_relations")):
        entries = kb.setdefault(part, {})
        for key in delta[removed]:
            entries.pop(key, None)
        entries.update(delta[part])
