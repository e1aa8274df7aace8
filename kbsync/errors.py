"""Errors kbsync raises on purpose, each with the exit code the CLI returns.

    KbsyncError (1)
     ├── FactsError (1)          bad fact file: carries file, line, column, hint
     │    └── ConfigError (1)    bad kbsync.yaml (same location fields)
     ├── ModelError (1)          model missing, pickle refused, unknown architecture
     ├── EditorError (1)         an editor could not compute an edit
     ├── LockHeld (3)            another kbsync process holds the project lock
     ├── GateFailed (4)          gates rejected every edit of a run; nothing committed
     └── IntegrityError (5)      hash chain broken, object tampered, stale plan

Exit code 2 is click's usage error, and also "changes present" for
`plan --detailed-exitcode` (Terraform parity).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_LOCK_HELD = 3
EXIT_GATE_FAILED = 4
EXIT_INTEGRITY = 5


class KbsyncError(Exception):
    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def to_json(self) -> dict:
        return {"type": "error", "error": type(self).__name__, "message": self.message,
                "hint": self.hint, "exit_code": self.exit_code}


class FactsError(KbsyncError):
    """A fact file is malformed or contradicts itself; points at file:line:column."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.file, self.line, self.column = file, line, column

    @property
    def location(self) -> str:
        if self.file is None:
            return ""
        loc = str(self.file)
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        return text if not self.hint else f"{text}\n  hint: {self.hint}"

    def to_json(self) -> dict:
        return {**super().to_json(), "file": self.file, "line": self.line, "column": self.column}


class ConfigError(FactsError):
    """kbsync.yaml is malformed; points at file:line:column like FactsError."""

    @classmethod
    def from_facts_error(cls, err: FactsError) -> ConfigError:
        return cls(err.message, file=err.file, line=err.line, column=err.column, hint=err.hint)


class ModelError(KbsyncError):
    pass


class EditorError(KbsyncError):
    pass


class LockHeld(KbsyncError):
    exit_code = EXIT_LOCK_HELD


class GateFailed(KbsyncError):
    exit_code = EXIT_GATE_FAILED


class IntegrityError(KbsyncError):
    exit_code = EXIT_INTEGRITY
