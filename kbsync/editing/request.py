"""What an editor is asked to do: make `prompt` (with its subject) continue with `target`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EditSpec:
    prompt: str              # template containing "{subject}" exactly once
    subject: str
    target: str              # the new object, without a leading space
    key: str = ""            # fact key, for bookkeeping only
    paraphrases: tuple[str, ...] = field(default=())   # rendered prompts, for evaluation

    @property
    def text(self) -> str:
        return self.prompt.format(subject=self.subject)
