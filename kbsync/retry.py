"""What a failing batch's retries are made of (the policy itself: scheduler.Scheduler.
commit_or_retry): one `Attempt` per edit-and-gate, and the editors a retry may use.

- the run's editor, for the batch and for its edits without the failing ones;
- the "more effort" editor: the run's editor with `retry.effort` x the optimisation
  (editing.hparams.more_effort), holding the run's editor memory as it is at each use;
  its patches are accepted by the run's editor, so the chain folds as if it had made them;
- `retry.fallback_editor` (e.g. a side memory), holding the memory its own patches on
  the chain give it (the chain's rebuild folds only the run's editor's); it accepts its
  own patches."""

from __future__ import annotations

from dataclasses import dataclass, field

from kbsync.editing.hparams import more_effort
from kbsync.editing.rebuild import fold_editor_state
from kbsync.editing.registry import make_editor
from kbsync.errors import ConfigError, EditorError
from kbsync.evaluate.gates import GateCheck


@dataclass
class Attempt:
    """One edit of some of a batch's facts, and what its gates said."""
    batch: int                        # its own batch number in the ledger
    origin: int                       # the batch number of the batch it retries (or its own)
    checks: list[GateCheck]
    passed: bool
    own: dict[str, bool] | None = None   # fact key -> passed its own check; None: unknown
                                         # (editor error, non-finite weights: no one to blame)
    lost: list[str] = field(default_factory=list)   # earlier facts the candidate lost

    def failed_only(self, metric: str) -> bool:
        return [c.metric for c in self.checks if not c.passed] == [metric]

    def own_failed(self, key: str) -> bool:
        return self.own is not None and not self.own.get(key, True)


class RetryEditors:
    """The editors of one run's retries, made on first use."""

    def __init__(self, project, lm, editor):
        """Checks `retry.fallback_editor` now, before the run starts, so a setting that
        cannot work is a ConfigError, not a failure halfway through an apply."""
        self.project, self.cfg, self.lm, self.editor = project, project.config, lm, editor
        self._effort = self._fallback = None
        self._folded = False
        name = self.cfg.retry.fallback_editor
        if not name:
            return
        if name == self.cfg.editor:
            raise ConfigError(f"retry.fallback_editor is the editor itself ({name})",
                              hint="name another editor (a side memory: grace, case or "
                                   "wise), or leave it unset")
        try:
            self._fallback = make_editor(name, lm.model.config,
                                         {**self.cfg.retry.fallback_hparams,
                                          "seed": self.cfg.seed})
        except EditorError as err:
            raise ConfigError(f"retry.fallback_editor {name}: {err.message}",
                              hint="set its hyper-parameters in retry.fallback_hparams "
                                   "(e.g. {layers: [N]}), or leave it unset") from err

    def effort(self):
        """The run's editor with `retry.effort` x the optimisation and its memory now."""
        if self._effort is None:
            over = more_effort(self.editor.hp, self.cfg.retry.effort)
            self._effort = make_editor(self.cfg.editor, self.lm.model.config,
                                       {**self.cfg.hparams, **over, "seed": self.cfg.seed})
        self._effort.load_state_dict(self.editor.state_dict())
        return self._effort

    def fallback(self, head: str | None):
        """`retry.fallback_editor` with its memory along HEAD's chain (folded at its first
        use), or None when none is named."""
        if self._fallback is not None and not self._folded:
            fold_editor_state(self.project, head, self._fallback)
            self._folded = True
        return self._fallback

    def accepting(self, editor):
        """The editor whose memory takes a patch `editor` made."""
        return editor if editor is self._fallback else self.editor
