"""One watch cycle: plan and apply with the gates, exactly as `kbsync apply
--auto-approve` does (same library call, same lock, same recovery of interrupted runs),
summarised as one event.

Which failures end the watch: only a damaged store (IntegrityError), which a later save
cannot fix. A bad fact file, a gate that rejects everything, a held lock, an editor
error or an I/O error are reported in the cycle's event and the watch goes on; the model
keeps the last committed snapshot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from kbsync.errors import GateFailed, IntegrityError, KbsyncError, LockHeld
from kbsync.store.canonical import utc_now

__all__ = ["run_cycle"]

Emit = Callable[[dict], None]
# applied: a run committed; no_changes: nothing to do; abandoned: stopped on request;
# rejected: the gates rejected every edit; lock_held: retried later; error: see `message`


def run_cycle(root: Path, number: int, trigger: str, *, stop: Callable[[], bool],
              lock_timeout: float = 0.0, emit: Emit = lambda event: None,
              kept=None) -> dict[str, Any]:
    """Run one cycle on the project at `root` and return its event. The project (and its
    kbsync.yaml) is read afresh, so a config edited during the watch takes effect.
    `emit` receives apply's own events (batches, gates, commits). `kept`: the watch's
    KeptModel, so the model is loaded once, not once per cycle."""
    from kbsync.apply import RunAbandoned, apply
    from kbsync.project import STORE_DIR, Project
    from kbsync.store.snapshots import SnapshotStore

    started = time.monotonic()
    event: dict[str, Any] = {"type": "cycle", "cycle": number, "trigger": trigger,
                             "at": utc_now()}
    recovered: list[str] = []

    def relay(inner: dict) -> None:
        if inner.get("type") == "recovered":
            recovered.append(inner["run_id"])
        emit(inner)

    try:
        result = apply(Project(root), lock_timeout=lock_timeout, emit=relay, command="watch",
                       stop=stop, kept=kept)
        event.update(outcome="applied" if result.run_id else "no_changes",
                     run_id=result.run_id, applied=len(result.applied),
                     known=len(result.known), skipped=len(result.skipped),
                     rejected=len(result.rejected), rejected_keys=result.rejected)
    except RunAbandoned as exc:
        event.update(outcome="abandoned", run_id=exc.run_id, message=str(exc))
    except GateFailed as err:
        event.update(outcome="rejected", message=_one_line(err))
    except LockHeld as err:
        event.update(outcome="lock_held", message=_one_line(err))
    except IntegrityError:
        raise
    except KbsyncError as err:  # a bad fact file (FactsError: file:line), an editor error
        event.update(outcome="error", message=_one_line(err), error=err.to_json())
    except OSError as err:      # e.g. a full disk: the store stays at its last snapshot
        where = f": {err.filename}" if err.filename else ""
        event.update(outcome="error", message=f"{err.strerror or err}{where}")
    event["snapshot"] = SnapshotStore(Path(root) / STORE_DIR).head()
    event["recovered"] = recovered
    event["seconds"] = round(time.monotonic() - started, 3)
    return event


def _one_line(err: Exception) -> str:
    """The error with its hint on one line: a watch logs one line per cycle."""
    return "; ".join(part.strip() for part in str(err).splitlines() if part.strip())
