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

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, PrivateAttr,
                      model_validator)

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
    """A fact asks its question through a relation's templates (`subject` + `relation`),
    or gives its own `prompt` (a question-form fact); `object` is the answer. A prompt
    fact's `subject`, if given, is the span of the prompt that key-based editors key on;
    without it they key on the prompt's last token (prompt_template)."""

    model_config = _STRICT
    subject: Name | None = None
    relation: Name | None = None
    object: Name
    paraphrases: list[Text] = []
    locality: list[LocalityProbe] = []
    id: Name | None = None
    source: Text | None = None
    valid_from: Text | None = None
    valid_to: Text | None = None
    prompt: Name | None = None

    @model_validator(mode="after")
    def _asks_one_question(self) -> Fact:
        if self.prompt is None:
            if self.relation is None:
                raise ValueError("a fact needs a `relation` (and a `subject`), or its own "
                                 "`prompt` (a question the object answers)")
            if self.subject is None:
                raise ValueError(f"a fact of relation {self.relation} needs a `subject`")
        elif self.relation is not None:
            raise ValueError("a fact has a `relation` or its own `prompt`, not both: "
                             "drop one of them")
        elif self.subject is not None:
            at = self.prompt.find(self.subject)
            if at < 0:
                raise ValueError(f"subject {self.subject!r} does not occur in the prompt "
                                 f"{self.prompt!r}; write it as the prompt spells it, or drop "
                                 "it (editors then key on the prompt's last token)")
            if "{" in self.prompt[:at] or "}" in self.prompt[:at]:
                raise ValueError("a prompt with a brace before its subject is not supported; "
                                 "drop the `subject` (editors then key on the prompt's "
                                 "last token) or the brace")
        return self

    @property
    def key(self) -> str:
        """Stable identity used by diff and ledger: an explicit id, else subject/relation,
        else (a prompt fact) the prompt."""
        if self.id is not None:
            return self.id
        return self.prompt if self.prompt is not None else f"{self.subject}/{self.relation}"

    @property
    def asks(self) -> tuple:
        """What the fact asks, apart from its answer: ("relation", subject, relation) or
        ("prompt", prompt). Diff and refresh compare it: another question is another fact."""
        if self.prompt is not None:
            return ("prompt", self.prompt)
        return ("relation", self.subject, self.relation)

    def prompt_template(self) -> tuple[str, str]:
        """A prompt fact as an edit template and subject (kbsync.editing.request.EditSpec):
        the prompt with `{subject}` at the subject's first occurrence (literal braces
        doubled), or, without a subject, "{subject}" with the whole prompt as the subject,
        so the subject's last token is the prompt's last token."""
        if self.prompt is None:
            raise ValueError(f"fact {self.key!r} has no prompt of its own")
        if self.subject is None:
            return "{subject}", self.prompt
        at = self.prompt.find(self.subject)
        after = self.prompt[at + len(self.subject):].replace("{", "{{").replace("}", "}}")
        return self.prompt[:at] + "{subject}" + after, self.subject


class KnowledgeBase(BaseModel):
    """Relations by id and facts by key; equality and hash ignore definition order."""

    model_config = _STRICT
    relations: dict[str, Relation] = {}
    facts: dict[str, Fact] = {}
    _json: str | None = PrivateAttr(default=None)

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
            if fact.relation is not None and fact.relation not in self.relations:
                raise ValueError(f"fact {key!r} uses unknown relation {fact.relation!r}")
        return self

    def __eq__(self, other: object) -> bool:
        # the fields only: pydantic would also compare the memo of to_json
        return (isinstance(other, KnowledgeBase) and self.relations == other.relations
                and self.facts == other.facts)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False
                   ) -> KnowledgeBase:
        copy = super().model_copy(update=update, deep=deep)
        copy._json = None                # an updated copy is another knowledge base
        return copy

    def prompts(self, fact_key: str) -> list[str]:
        """Every template of the fact's relation with its subject (a prompt fact: its
        prompt); the first is the main rewrite prompt."""
        fact = self.facts[fact_key]
        if fact.prompt is not None:
            return [fact.prompt]
        relation = self.relations[fact.relation]
        return [relation.prompt(fact.subject, i) for i in range(len(relation.templates))]

    def canonical(self) -> dict:
        return {"relations": self.canonical_relations(),
                "facts": self.canonical_facts(sorted(self.facts))}

    def canonical_relations(self) -> dict:
        return {k: self.relations[k].model_dump(mode="json") for k in sorted(self.relations)}

    def canonical_facts(self, keys) -> dict:
        """The canonical form of the facts of `keys` this knowledge base holds (others are
        left out): what a stored delta of the applied state needs, without the rest."""
        return {k: _fact_json(self.facts[k]) for k in keys if k in self.facts}

    def to_json(self) -> str:
        # sort_keys + fixed separators: one byte form per knowledge base. Kept once made:
        # the model is frozen, and plan, the plan check and apply each ask (1 s at 100k).
        if self._json is None:
            self._json = json.dumps(self.canonical(), sort_keys=True, ensure_ascii=False,
                                    separators=(",", ":"))
        return self._json

    @classmethod
    def from_json(cls, text: str | bytes) -> KnowledgeBase:
        return cls.model_validate_json(text)

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def _fact_json(fact: Fact) -> dict:
    """A fact's canonical form. `prompt` is left out when unset, so knowledge bases
    without question-form facts keep the content hash they had before it existed."""
    data = fact.model_dump(mode="json")
    if data["prompt"] is None:
        del data["prompt"]
    return data
