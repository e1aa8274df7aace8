"""The report page: one self-contained index.html (inline CSS, no script, no network) that
shows the PNGs beside it and tables of what the ledger holds.

Every string that comes from the ledger, the manifests or the file system goes through
`esc`: fact keys, run ids and error messages are user data and must not become markup.
Cells carry the exact values in data-* attributes, so tools (and tests) can read the page
back without parsing formatted numbers.
"""

from __future__ import annotations

import html
import math

from kbsync.report.data import COUNTED, ReportData, SnapshotRecord

CAPTIONS = {
    "gates.png": "Gate metrics per snapshot, in commit order (dashed: threshold).",
    "edits.png": "Edits per run: applied, rejected by the gates, already known, skipped.",
    "seconds.png": "Seconds per attempted edit (applied or rejected), per run: editing, gates "
                   "and commit, bisections included; model loading and planning excluded.",
    "norms.png": "Frobenius norm of each edited matrix relative to the base model.",
}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1150px;
color:#212121;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#616161;font-size:.9em} .note{background:#fff8e1;border-left:4px solid #ffb300;
padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f5f5f5} .scroll{overflow-x:auto} td.l{text-align:left} code{font-size:.95em}
td.fail{background:#ffebee;color:#b71c1c;font-weight:600} td.pass{color:#1b5e20}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#616161;font-size:.9em}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: float | int | None, digits: int = 4) -> str:
    """Short, stable text for a number: 4 significant digits, NaN/inf spelled out."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def short_time(stamp: str | None) -> str:
    """2026-01-31T12:00:00.123456Z -> 2026-01-31 12:00:00 (UTC; the full stamp is the title)."""
    return (stamp or "")[:19].replace("T", " ")


def render(data: ReportData, figures: list[str]) -> str:
    head = data.head[:12] if data.head else "none"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kbsync report: {esc(data.project)}</title><style>{STYLE}</style></head><body>",
        "<h1>kbsync report</h1>",
        f'<p class="meta">project <code>{esc(data.project)}</code> · HEAD <code>{esc(head)}</code>'
        f" · {len(data.snapshots)} snapshot(s), {len(data.runs)} run(s) · generated "
        f"{esc(data.generated_at)}</p>",
    ]
    if not data.snapshots:
        parts.append('<p class="note" id="empty">No snapshots yet: nothing has been committed. '
                     "Run <code>kbsync apply</code>, then <code>kbsync report</code> again.</p>")
    if data.norms_note:
        parts.append(f'<p class="note">{esc(data.norms_note)}</p>')
    for snap in data.snapshots:
        if snap.note:
            parts.append(f'<p class="note">snapshot {esc(snap.id[:12])}: {esc(snap.note)}</p>')
    for name in figures:
        parts.append(f'<figure><img src="{esc(name)}" alt="{esc(CAPTIONS.get(name, name))}">'
                     f"<figcaption>{esc(CAPTIONS.get(name, ''))}</figcaption></figure>")
    if data.snapshots:
        parts += ["<h2>Snapshots</h2>", '<p class="meta">Gate values of the batch each '
                  "snapshot committed (hover for the threshold); rollbacks and commits of "
                  "already-known facts pass no gates.</p>", snapshot_table(data)]
    if data.capacity and data.capacity["budgets"]:
        parts += ["<h2>Capacity</h2>", capacity_section(data.capacity)]
    if data.base_norms:
        parts += ["<h2>Edited matrices</h2>", '<p class="meta">‖W‖<sub>F</sub> / '
                  "‖W<sub>base</sub>‖<sub>F</sub> of each matrix an editor changed "
                  "(MLP out-projection per layer).</p>", norms_table(data)]
    if data.runs:
        parts += ["<h2>Runs</h2>", run_table(data)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def capacity_section(cap: dict) -> str:
    """The cumulative gates' budget spent, and the facts left at the rate so far."""
    left = cap["facts_left"]
    text = (f'<p class="meta">{cap["facts"]} fact(s) edited so far; at that rate about '
            f'{esc(left)} more fit before a gate fails.</p>' if left is not None else
            '<p class="meta">No budget spent yet: nothing to project from.</p>')
    if cap["warn"]:
        text += f'<p class="note" id="capacity-warning">Nearly spent: {esc(cap["advice"])}.</p>'
    rows = [_row(["gate", "spent", "budget", "left", "facts left"], header=True)]
    for b in cap["budgets"]:
        cells = [f'<td class="l">{esc(b["metric"])}</td>']
        for name in ("spent", "budget", "left_share", "facts_left"):
            value = b[name]
            shown = fmt(100 * value, 3) + "%" if name == "left_share" else fmt(value)
            cells.append(f'<td data-metric="{name}" data-value="{esc(repr(value))}">'
                         f"{esc(shown)}</td>")
        rows.append(f'<tr data-budget="{esc(b["metric"])}">' + "".join(cells) + "</tr>")
    return text + _table("capacity", rows)


def snapshot_table(data: ReportData) -> str:
    metrics = data.metrics
    head = ["serial", "snapshot", "committed", "edits", "rollback of", *metrics]
    rows = [_row(head, header=True)]
    for snap in data.snapshots:
        rows.append(_snapshot_row(snap, metrics, data.head))
    return _table("snapshots", rows)


def norms_table(data: ReportData) -> str:
    rows = [_row(["serial", "snapshot", *(f"layer {l}" for l in data.layers)], header=True),
            '<tr data-snapshot="base"><td>0</td><td class="l">base model</td>'
            + "".join(f'<td data-layer="{l}" data-value="1.0" title="‖W_base‖ = '
                      f'{esc(fmt(data.base_norms[l]))}">1</td>' for l in data.layers) + "</tr>"]
    for snap in data.snapshots:
        cells = [f"<td>{snap.serial}</td>",
                 f'<td class="l" title="{esc(snap.id)}"><code>{esc(snap.id[:12])}</code></td>']
        for layer in data.layers:
            value = snap.norms.get(layer)
            attr = f' data-layer="{layer}" data-value="{esc(repr(value))}"' if value is not None else ""
            cells.append(f"<td{attr}>{esc(fmt(value, 7))}</td>")
        rows.append(f'<tr data-snapshot="{esc(snap.id)}">' + "".join(cells) + "</tr>")
    return _table("norms", rows)


def _snapshot_row(snap: SnapshotRecord, metrics: list[str], head: str | None) -> str:
    mark = (" <b>HEAD</b>" if snap.id == head else "") + (" rebase" if snap.rebase else "")
    cells = [
        f"<td>{snap.serial}</td>",
        f'<td class="l" title="{esc(snap.id)} (run {esc(snap.run_id)})"><code>'
        f"{esc(snap.id[:12])}</code>{mark}</td>",
        f'<td class="l" title="{esc(snap.at)}">{esc(short_time(snap.at))}</td>',
        f"<td>{snap.edits}</td>",
        f'<td class="l"><code>{esc((snap.rollback_of or "")[:12])}</code></td>',
    ]
    for metric in metrics:
        gate = snap.gates.get(metric)
        if gate is None:
            cells.append("<td></td>")
            continue
        state = {True: "pass", False: "fail"}.get(gate.passed, "")
        cells.append(f'<td class="{state}" data-metric="{esc(metric)}" '
                     f'data-value="{esc(repr(gate.value))}" title="threshold '
                     f'{esc(fmt(gate.threshold))}">{esc(fmt(gate.value))}</td>')
    note = f' title="{esc(snap.note)}"' if snap.note else ""
    return f'<tr data-snapshot="{esc(snap.id)}"{note}>' + "".join(cells) + "</tr>"


def run_table(data: ReportData) -> str:
    head = ["#", "run", "command", "started", "editor", "outcome", *COUNTED, "s / edit"]
    rows = [_row(head, header=True)]
    for i, run in enumerate(data.runs, 1):
        cells = [f"<td>{i}</td>",
                 f'<td class="l"><code>{esc(run.run_id)}</code></td>',
                 f'<td class="l">{esc(run.command)}</td>',
                 f'<td class="l" title="{esc(run.started_at)}">{esc(short_time(run.started_at))}</td>',
                 f'<td class="l">{esc(run.editor)}</td>',
                 f'<td class="l">{esc(run.outcome or "open")}</td>']
        cells += [f'<td data-status="{s}">{run.counts.get(s, 0)}</td>' for s in COUNTED]
        cells.append(f"<td>{esc(fmt(run.seconds_per_edit, 3))}</td>")
        rows.append(f'<tr data-run="{esc(run.run_id)}">' + "".join(cells) + "</tr>")
    return _table("runs", rows)


def _table(name: str, rows: list[str]) -> str:
    # a wide table scrolls inside its box instead of widening the whole page
    return f'<div class="scroll"><table id="{name}">\n' + "\n".join(rows) + "\n</table></div>"


def _row(cells: list[str], *, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{esc(c)}</{tag}>" for c in cells) + "</tr>"
