"""The fact model: relations with prompt templates, facts, and the knowledge base.

Every model is strict (YAML's `no` must not silently become False), forbids unknown
keys (typos are errors) and is frozen (a loaded knowledge base is a value, not a
workspace). Surrounding whitespace is trimmed and text is put in NFC form, so that
`"France "` and `"France"`, or a composed and a decomposed `é`, diff as the same object.
Control and bidi characters are refused in keys and objects (kbsync.text): they would
rewrite the plan a reviewer reads, and SQLite cuts keys at NUL.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from kbsync.text import describe_char, first_unsafe, nfc

__all__ = ["Relation", "LocalityProbe", "Fact", "KnowledgeBase", "check_template", "Name",
           "Text", "Template"]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def _strip(value: Any) -> Any:
    # Only strings are trimmed; anything else goes on to the strict type check.
    return nfc(value.strip()) if isinstance(value, str) else value


def _safe(value: str) -> str:
    char = first_unsafe(value)
    if char is not None:
        raise ValueError(f"contains the control character {describe_char(char)}, "
                         "which would alter how the text is shown; remove it")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def check_template(template: str) -> str:
    """A template is a prompt prefix with exactly one `{subject}` and no other field."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string ({err}); "
                         "write literal braces as {{ and }}") from None
    names = [name for name, _, _ in fields]
    if names.count("subject") != 1:
        raise ValueError(f"template {template!r} must contain {{subject}} exactly once "
                         f"(found {names.count('subject')})")
    others = [name for name in names if name != "subject"]
    if others or any(spec or conv for _, spec, conv in fields):
        bad = others[0] if others else "subject"
        raise ValueError(f"template {template!r} may only use the placeholder {{subject}} "
                         f"(found {{{bad}}} or a format spec); write literal braces as {{{{ }}}}")
    return template


Text = Annotated[str, BeforeValidator(_strip), AfterValidator(_non_empty)]
# What makes up fact keys and what the plan prints (subject, relation, object, id): no
# control or bidi characters. Prompts may hold newlines (CounterFact paraphrases do).
Name = Annotated[Text, AfterValidator(_safe)]
Template = Annotated[str, BeforeValidator(_strip), AfterValidator(check_template)]


class Relation(BaseModel):
    """A relation (Wikidata-style id such as P17) and how to ask for its object."""

    model_config = _STRICT
    id: Name
    label: Text
    templates: list[Template]

    @model_validator(mode="after")
    def _has_templates(self) -> Relation:
        if not self.templates:
            raise ValueError(f"relation {self.id} needs at least one template, "
                             "e.g. \"{subject} is located in\"")
        return self

    def prompt(self, subject: str, i: int = 0) -> str:
        return self.templates[i].format(subject=subject)


class LocalityProbe(BaseModel):
    """An unrelated prompt whose answer an edit must leave unchanged."""

    model_config = _STRICT
    prompt: Text
    answer: Text


class Fact(BaseModel):
    model_config = _STRICT
    subject: Name
    relation: Name
    object: Name
    paraphrases: list[Text] = []
    locality: list[LocalityProbe] = []
    id: Name | None = None
    source: Text | None = None
    valid_from: Text | None = None
    valid_to: Text | None = None

    @property
    def key(self) -> str:
        """Stable identity used by diff and ledger: an explicit id, else subject/relation."""
        return self.id if self.id is not None else f"{self.subject}/{self.relation}"


class KnowledgeBase(BaseModel):
    """Relations by id and facts by key; equality and hash ignore definition order."""

    model_config = _STRICT
    relations: dict[str, Relation] = {}
    facts: dict[str, Fact] = {}

    @model_validator(mode="before")
    @classmethod
    def _nfc_keys(cls, data: Any) -> Any:
        # A state written before keys were normalised still matches its (now NFC) facts.
        if not isinstance(data, dict):
            return data
        return {name: {nfc(k) if isinstance(k, str) else k: v for k, v in value.items()}
                if name in ("relations", "facts") and isinstance(value, dict) else value
                for name, value in data.items()}

    @model_validator(mode="after")
    def _consistent(self) -> KnowledgeBase:
        for rid, relation in self.relations.items():
            if relation.id != rid:
                raise ValueError(f"relation stored under {rid!r} has id {relation.id!r}")
        for key, fact in self.facts.items():
            if fact.key != key:
                raise ValueError(f"fact stored under {key!r} has key {fact.key!r}")
            if fact.relation not in self.relations:
                raise ValueError(f"fact {key!r} uses unknown relation {fact.relation!r}")
        return self

    def prompts(self, fact_key: str) -> list[str]:
        """Every template of the fact's relation with its subject; the first is the
        main rewrite prompt."""
        fact = self.facts[fact_key]
        relation = self.relations[fact.relation]
        return [relation.prompt(fact.subject, i) for i in range(len(relation.templates))]

    def canonical(self) -> dict:
        return {"relations": {k: self.relations[k].model_dump(mode="json")
                              for k in sorted(self.relations)},
                "facts": {k: self.facts[k].model_dump(mode="json") for k in sorted(self.facts)}}

    def to_json(self) -> str:
        # sort_keys + fixed separators: one byte form per knowledge base.
        return json.dumps(self.canonical(), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KnowledgeBase:
        return cls.model_validate_json(text)

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
