"""The report's figures: one PNG each, drawn with matplotlib's Agg canvas.

matplotlib is imported inside the functions, so importing kbsync stays fast, and pyplot is
never used: a Figure drawn on its own FigureCanvasAgg needs no display and changes no
global backend of a program that calls `write_report`.

Each function returns the file name it wrote, or None when the ledger has nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

from kbsync.report.data import COUNTED, ReportData

FIGURES = ("gates.png", "edits.png", "seconds.png", "norms.png")
NOT_PLOTTED = {"finite"}          # 1.0 on every committed snapshot: a flat line says nothing
COLORS = {"applied": "#2e7d32", "rejected": "#c62828", "known": "#90a4ae", "skipped": "#cfd8dc"}
DPI = 100


def draw_all(data: ReportData, out_dir: Path) -> list[str]:
    """Every figure with something to show; stale PNGs of earlier reports are removed so
    the folder never shows a figure the page does not."""
    written = []
    for name, draw in zip(FIGURES, (gates, edits, seconds, norms)):
        target = out_dir / name
        result = draw(data, target)
        if result is None:
            target.unlink(missing_ok=True)
        else:
            written.append(result)
    return written


def figure(width: float, height: float):
    """A matplotlib figure drawn off screen (Agg), at the reports' DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, target: Path) -> str:
    fig.savefig(target, format="png")
    return target.name


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def gates(data: ReportData, target: Path) -> str | None:
    """One panel per gate metric: its value per snapshot (commit order) and threshold."""
    metrics = [m for m in data.metrics if m not in NOT_PLOTTED]
    if not metrics:
        return None
    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    fig = figure(11, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()
    serials = [s.serial for s in data.snapshots]
    rollbacks = [s.serial for s in data.snapshots if s.rollback_of]
    for ax, metric in zip(axes, metrics):
        values = [_finite(s.gates[metric].value) if metric in s.gates else math.nan
                  for s in data.snapshots]
        limits = [_finite(s.gates[metric].threshold) if metric in s.gates else math.nan
                  for s in data.snapshots]
        failed = [(x, v) for x, v, s in zip(serials, values, data.snapshots)
                  if metric in s.gates and s.gates[metric].passed is False]
        ax.plot(serials, values, marker="o", color="#1565c0", label="value")
        ax.plot(serials, limits, linestyle="--", color="#616161", label="threshold", zorder=3)
        if failed:
            ax.scatter(*zip(*failed), color=COLORS["rejected"], zorder=3, label="failed")
        for x in rollbacks:
            ax.axvline(x, color="#ef6c00", linestyle=":", linewidth=1)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(metrics) - cols):len(metrics)]:
        ax.set_xlabel("snapshot serial" + (" (dotted: rollback)" if rollbacks else ""))
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle("Gate metrics per committed snapshot")
    return _save(fig, target)


def _run_labels(runs) -> list[str]:
    return [f"#{i} {r.run_id[-8:]}" for i, r in runs]


def edits(data: ReportData, target: Path) -> str | None:
    """Stacked bars per run: edits applied, rejected, already known, skipped."""
    runs = [(i, r) for i, r in enumerate(data.runs, 1) if sum(r.counts.values())]
    if not runs:
        return None
    fig = figure(max(6.0, 0.6 * len(runs) + 3), 4)
    ax = fig.subplots()
    labels = _run_labels(runs)
    bottom = [0] * len(runs)
    for status in COUNTED:
        heights = [r.counts.get(status, 0) for _, r in runs]
        ax.bar(labels, heights, bottom=bottom, color=COLORS[status], label=status)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("facts")
    ax.set_title("Edits per run")
    ax.legend(fontsize="small")
    ax.tick_params(axis="x", labelrotation=45)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, target)


def seconds(data: ReportData, target: Path) -> str | None:
    """Seconds per attempted edit (applied or rejected) per run."""
    runs = [(i, r) for i, r in enumerate(data.runs, 1) if r.seconds_per_edit is not None]
    if not runs:
        return None
    fig = figure(max(6.0, 0.6 * len(runs) + 3), 4)
    ax = fig.subplots()
    ax.bar(_run_labels(runs), [r.seconds_per_edit for _, r in runs], color="#6a1b9a")
    ax.set_ylabel("seconds per edit")
    ax.set_title("Seconds per attempted edit")
    ax.tick_params(axis="x", labelrotation=45)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, target)


def norms(data: ReportData, target: Path) -> str | None:
    """‖W‖_F / ‖W_base‖_F of each edited matrix: the base (serial 0, always 1) and every
    snapshot."""
    if not data.layers:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = figure(11, 4)
    ax = fig.subplots()
    serials = [0] + [s.serial for s in data.snapshots]
    for layer in data.layers:
        values = [1.0] + [s.norms.get(layer, math.nan) for s in data.snapshots]
        ax.plot(serials, values, marker="o", label=f"layer {layer}")
    ax.axhline(1.0, color="#616161", linestyle="--", linewidth=1)
    ax.ticklabel_format(axis="y", useOffset=False)   # show 1.0012, not "+1" and 0.0012
    ax.set_xlabel("snapshot serial (0 = base model)")
    ax.set_ylabel("‖W‖ / ‖W_base‖ (Frobenius)")
    ax.set_title("Norm of each edited matrix relative to the base model")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=min(4, len(data.layers)))
    return _save(fig, target)
