"""Plan and EditRequest: what `apply` must change, and the versioned plan file format.

A plan is pinned to the store state it was computed against (serial + snapshot id) and
to the content hash of the facts it was computed from, so `apply` can refuse a stale one.

JSON format (`format_version` "MAJOR.MINOR"): minor versions only add keys, and readers
ignore keys they do not know; an unknown major version is refused (IntegrityError).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kbsync import __version__
from kbsync.errors import IntegrityError, KbsyncError
from kbsync.facts.schema import Fact

__all__ = ["FORMAT_VERSION", "EditRequest", "Plan"]

# 1.1: EditRequest.observed, Plan.refresh (drift refresh); 1.2: EditRequest.prompt
# (question-form facts: no relation, subject optional)
FORMAT_VERSION = "1.2"
_READABLE_MAJOR = 1


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class EditRequest(BaseModel):
    """One change to the model's knowledge.

    add: new_object only; update: old_object -> new_object; remove: old_object only.
    `fact` is the desired fact (add/update) with its paraphrases and locality probes, so a
    plan file says exactly what the gates will check.

    A drift request (`reason` "drift", from `--refresh`) is an update whose old and new
    object are the same: the applied state holds the fact but the model no longer
    answers it; `observed` is what it answered instead.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    op: Literal["add", "update", "remove"]
    fact_key: str
    subject: str | None          # None: a prompt fact without a subject span
    relation: str | None         # None: a prompt fact (it asks `prompt`)
    old_object: str | None
    new_object: str | None
    reason: Literal["diff", "drift"] = "diff"
    fact: Fact | None = None
    # drift (`--refresh`): what the model answered instead of the object when probed
    observed: str | None = None
    prompt: str | None = None    # a question-form fact's own prompt

    @model_validator(mode="after")
    def _objects_match_op(self) -> EditRequest:
        need_old, need_new = {"add": (False, True), "update": (True, True),
                              "remove": (True, False)}[self.op]
        if need_old != (self.old_object is not None) or need_new != (self.new_object is not None):
            raise ValueError(f"{self.op} request for {self.fact_key!r}: old_object must be "
                             f"{'set' if need_old else 'None'} and new_object must be "
                             f"{'set' if need_new else 'None'}")
        return self


def drift_request(key: str, fact: Fact, observed: str | None = None) -> EditRequest:
    """Teach `fact` again as it stands (old object == new object, reason "drift"): a
    committed fact the model no longer answers."""
    return EditRequest(op="update", fact_key=key, subject=fact.subject, relation=fact.relation,
                       old_object=fact.object, new_object=fact.object, reason="drift",
                       fact=fact, observed=observed, prompt=fact.prompt)


class Plan(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: str = FORMAT_VERSION
    requests: list[EditRequest]
    base_serial: int
    base_snapshot: str | None
    facts_hash: str
    facts_dir: str
    git: dict[str, Any] | None = None       # {"commit": sha | None, "dirty": bool}
    created_at: str = Field(default_factory=_utc_now)
    from_rev: str | None = None              # set when diffed against a git revision
    kbsync_version: str = __version__
    # set by `--refresh`: {"snapshot", "probed", "drifted"}; None = the model was not probed
    refresh: dict[str, Any] | None = None

    def summary(self) -> dict[str, int]:
        """Counts per op; with `drift` (updates planned because the model drifted, a
        subset of `change`) only for a refreshed plan, which is the only kind that knows."""
        ops = [r.op for r in self.requests]
        counts = {"add": ops.count("add"), "change": ops.count("update"),
                  "remove": ops.count("remove")}
        if self.refresh is not None:
            counts["drift"] = sum(r.reason == "drift" for r in self.requests)
        return counts

    @property
    def has_changes(self) -> bool:
        return bool(self.requests)

    def to_dict(self) -> dict[str, Any]:
        # `summary` is derived, written for readers' convenience and ignored on read.
        return {**self.model_dump(mode="json"), "summary": self.summary()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise KbsyncError(f"not a plan file: invalid JSON ({err})") from None
        if not isinstance(data, dict):
            raise KbsyncError("not a plan file: expected a JSON object")
        _check_version(data.get("format_version"))
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise KbsyncError(f"not a valid plan file: {where}: {first['msg']}") from None


def _check_version(version: Any) -> None:
    major = str(version).split(".", 1)[0]
    if not isinstance(version, str) or not major.isdigit():
        raise IntegrityError(f"plan file has no valid format_version (got {version!r})")
    if int(major) != _READABLE_MAJOR:
        raise IntegrityError(
            f"plan format {version} is not supported by kbsync {__version__} "
            f"(it reads {_READABLE_MAJOR}.x)", hint="re-create the plan with this kbsync version")
