"""Plot issue 7's lifelong runs: efficacy of the first edits and perplexity drift as edits
accumulate, one line per editor, from `kbsync bench quality --trace N --json` outputs.

    python benchmarks/lifelong_plot.py OUT.png RUN.json [RUN.json ...]

Each RUN.json is the JSON line one bench command printed (its "trace" list is the data).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def plot(runs: list[dict], target: Path) -> None:
    from kbsync.report.plots import figure

    fig = figure(15, 4)
    first, local, drift = fig.subplots(1, 3)
    for run in runs:
        done = [point["done"] for point in run["trace"]]
        label = f"{run['editor']} (batch {run['batch']})"
        first.plot(done, [point["efficacy_first"] for point in run["trace"]], label=label)
        drift.plot(done, [point["ppl_drift"] for point in run["trace"]], label=label)
        if all("locality_first" in point for point in run["trace"]):   # traced since issue 18
            local.plot(done, [point["locality_first"] for point in run["trace"]], label=label)
    first.set(title="efficacy of the first edits", xlabel="edits made", ylabel="efficacy",
              ylim=(-0.02, 1.02))
    local.set(title="locality of their neighbours", xlabel="edits made",
              ylabel="top-1 unchanged", ylim=(-0.02, 1.02))
    drift.set(title="perplexity drift", xlabel="edits made", ylabel="ppl / ppl(base) − 1")
    drift.set_yscale("symlog", linthresh=0.1)
    for ax in (first, local, drift):
        ax.grid(alpha=0.3)
    first.legend(fontsize=8)
    fig.savefig(target, format="png")


def main() -> None:
    target, *paths = sys.argv[1:]
    plot([load(Path(p)) for p in paths], Path(target))


if __name__ == "__main__":
    main()
