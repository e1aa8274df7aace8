"""The ledger (and the manifests it names) read into plain records for the report.

Nothing here writes to the project: a missing ledger is read as an empty one instead of
being created, and a damaged manifest becomes a note on its snapshot, not an error, so a
report can still be made of a project that `kbsync audit verify` complains about.

Where each figure comes from:
  snapshots   `snapshots` rows in seq order = commit order (rollbacks included)
  gate values `gates` rows of the snapshot's run and batch (the manifest's meta.batch);
              the manifest's copy of the gates only when the ledger has none
  edit counts per run, the latest `edits` row of each fact in that run
  seconds     `edit_seconds` of the run's `run_committed` event (apply records it: time
              in batches, retries included) divided by the edits attempted
  capacity    the cumulative gates (ppl_drift, general_knowledge) of the last snapshot that
              passed gates, against their thresholds, projected over the facts edited by
              the gated snapshots so far (kbsync.evaluate.capacity)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kbsync.errors import KbsyncError
from kbsync.evaluate.capacity import capacity
from kbsync.store.canonical import nonfinite_as_text, utc_now
from kbsync.store.manifest import REBASE, Manifest
from kbsync.store.snapshots import SnapshotStore

# statuses counted per run, in the order the report shows them
COUNTED = ("applied", "rejected", "known", "skipped")


@dataclass
class GateValue:
    value: float | None
    threshold: float | None
    passed: bool | None


@dataclass
class SnapshotRecord:
    id: str
    serial: int
    run_id: str | None
    at: str                                   # when the ledger recorded the commit
    parent: str | None = None
    rollback_of: str | None = None
    rebase: bool = False                      # the gates' new reference (kbsync/rebase.py)
    patch: str | None = None
    batch: int | None = None
    edits: int = 0                            # facts this snapshot's batch edited
    gates: dict[str, GateValue] = field(default_factory=dict)
    gates_from: str = "ledger"                # "ledger", "manifest" or "none"
    norms: dict[int, float] = field(default_factory=dict)   # layer -> ‖W‖/‖W_base‖
    note: str | None = None                   # e.g. a damaged manifest


@dataclass
class RunRecord:
    run_id: str
    command: str
    started_at: str | None
    editor: str | None
    outcome: str | None
    counts: dict[str, int] = field(default_factory=dict)
    edit_seconds: float | None = None
    seconds_per_edit: float | None = None


@dataclass
class ReportData:
    project: str
    generated_at: str
    head: str | None
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    base_norms: dict[int, float] = field(default_factory=dict)  # edited layer -> ‖W_base‖_F
    norms_note: str | None = None                       # why norms are missing, if they are
    capacity: dict | None = None                        # evaluate.capacity, as a dict

    @property
    def layers(self) -> list[int]:
        """Every layer an editor changed along the reported snapshots, sorted."""
        return sorted(self.base_norms)

    @property
    def metrics(self) -> list[str]:
        """Gate metrics present, in first-seen order (the order the gates run in)."""
        seen: dict[str, None] = {}
        for snap in self.snapshots:
            seen.update(dict.fromkeys(snap.gates))
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        # JSON has no NaN/Infinity: spell them as strings, like the ledger's JSON columns
        return nonfinite_as_text(asdict(self) | {"metrics": self.metrics, "layers": self.layers})


def read_report_data(project, *, norms: bool = True) -> ReportData:
    """Every snapshot and run the ledger knows, with gate values, counts and timing; with
    `norms`, also the relative norms of the edited matrices (kbsync.report.norms)."""
    store = SnapshotStore(project.kbsync_dir)
    try:
        head = store.head()
    except KbsyncError:
        head = None                           # a damaged HEAD: still report the ledger
    data = ReportData(project=str(project.root), generated_at=utc_now(), head=head)
    if not (project.kbsync_dir / "ledger.db").is_file():
        return data                           # never create a ledger just to read it
    with project.ledger() as ledger:
        gate_rows = ledger.rows("gates")
        manifests = _snapshot_records(ledger.rows("snapshots"), store, gate_rows, data)
        data.runs = _run_records(ledger.runs(), ledger.rows("edits"), ledger.rows("events"))
    data.capacity = _capacity(data.snapshots)
    if norms and data.snapshots:
        from kbsync.report.norms import relative_norms

        try:
            data.base_norms, per_snapshot = relative_norms(project, manifests)
        except (KbsyncError, OSError, ValueError) as exc:
            # the model may be elsewhere or gone: the rest of the report still stands
            data.norms_note = f"relative norms unavailable: {getattr(exc, 'message', exc)}"
        else:
            for snap in data.snapshots:
                snap.norms = per_snapshot.get(snap.id, {})
    return data


def _snapshot_records(rows: list[dict], store: SnapshotStore, gate_rows: list[dict],
                      data: ReportData) -> dict[str, Manifest]:
    """Fill data.snapshots; return the readable manifests by id (for the norms)."""
    by_batch: dict[tuple[str | None, int | None], list[dict]] = {}
    for g in gate_rows:
        by_batch.setdefault((g["run_id"], g["batch"]), []).append(g)
    manifests: dict[str, Manifest] = {}
    for row in rows:
        sid = row["snapshot_id"]
        snap = SnapshotRecord(id=sid, serial=row["serial"], run_id=row["run_id"], at=row["at"],
                              parent=row["parent"], rollback_of=row["rollback_of"])
        data.snapshots.append(snap)
        try:
            manifest = store.read(sid)
        except KbsyncError as exc:
            snap.note, snap.gates_from = exc.message, "none"
            continue
        manifests[sid] = manifest
        snap.patch = manifest.patch
        snap.rebase = REBASE in manifest.meta
        snap.batch = manifest.meta.get("batch")
        snap.edits = len(manifest.meta.get("edits", []))
        if not manifest.gates:
            # a rollback, or a commit of known/skipped facts only: it passed no gates,
            # and meta.batch then names the run's last batch, which may be a rejected one
            snap.gates_from = "none"
            continue
        checks = by_batch.get((snap.run_id, snap.batch), [])
        if checks:
            snap.gates = {g["metric"]: GateValue(g["value"], g["threshold"], g["passed"])
                          for g in checks}
        else:                                 # ledger rows lost: the manifest kept a copy
            snap.gates_from = "manifest"
            snap.gates = {m: GateValue(g.get("value"), g.get("threshold"), g.get("passed"))
                          for m, g in manifest.gates.items()}
    return manifests


def _capacity(snapshots: list[SnapshotRecord]) -> dict | None:
    """The budget after the last gated snapshot; facts = the edits of the gated snapshots
    up to it since the last rebase, which the gates measure from (a rollback's are counted
    too: the figure is an estimate)."""
    last = max((i for i, s in enumerate(snapshots) if s.rebase), default=-1)
    gated = [s for s in snapshots[last + 1:] if s.gates]
    if not gated:
        return None
    gates = {m: (g.value, g.threshold) for m, g in gated[-1].gates.items()
             if isinstance(g.value, (int, float)) and isinstance(g.threshold, (int, float))}
    return capacity(sum(s.edits for s in gated), gates).to_dict()


def _run_records(runs: list[dict], edits: list[dict], events: list[dict]) -> list[RunRecord]:
    latest: dict[str, dict[str, str]] = {}        # run -> fact -> its latest status
    for e in edits:
        latest.setdefault(e["run_id"], {})[e["fact_key"]] = e["status"]
    seconds: dict[str, float] = {}
    for ev in events:
        detail = ev.get("detail") or {}
        if ev["kind"] == "run_committed" and isinstance(detail.get("edit_seconds"), (int, float)):
            seconds[ev["run_id"]] = float(detail["edit_seconds"])
    records = []
    for run in runs:
        statuses = list(latest.get(run["run_id"], {}).values())
        counts = {s: statuses.count(s) for s in COUNTED}
        record = RunRecord(run["run_id"], run["command"], run.get("started_at"), run.get("editor"),
                           run.get("outcome"), counts, seconds.get(run["run_id"]))
        attempted = counts["applied"] + counts["rejected"]
        if record.edit_seconds is not None and attempted:
            record.seconds_per_edit = record.edit_seconds / attempted
        records.append(record)
    return records

