"""The product at scale (issue 22, item 7): an N-fact knowledge base from CounterFact-edit
cases (or zsRE questions, --dataset zsre) through plan, apply, refresh, ask, log and report, as a user runs them.

For each N, a fresh project (the default model and, unless --editor says otherwise, the
project default editor) gets one fact file of N question-form facts, CounterFact's
counterfactual edits (`prompt`, `subject`, `object` = the new target, the rephrased prompt
as a paraphrase; benchmarks/data/SOURCES.md), then

* plan s: `compute_plan` (every fact an add);
* apply: `kbsync apply --auto-approve` through the library; s/fact = apply wall time over
  the facts attempted (known facts need no edit and are not attempted);
* committed / known / rejected / repaired (earlier facts a batch lost and taught back,
  retry.repair), then `refresh`: drifted = committed facts HEAD no longer
  answers;
* bytes/fact: every file under .kbsync/ over the facts committed;
* HEAD load s against base load s: `load_at(HEAD)` (the chain replayed) and the base model;
* ask s at HEAD, and in a fresh project (nothing applied: the base model); log s
  (`log --limit 20`), report s.

    python benchmarks/apply_scale.py -n 1000 -n 10000 [--editor E] [--batch B] [--json]

Long: at the default editor's ~2.5 s/edit on a 2-core CPU, 1,000 facts take about 45 min.
A run killed mid-apply resumes when started again with the same --workdir (apply picks up
where the ledger says it stopped)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def counterfact_facts(n: int, offset: int = 0) -> list[dict]:
    """N prompt facts from CounterFact-edit: the counterfactual target is the object."""
    facts = []
    for rec in json.loads((DATA / "counterfact-edit.json").read_text())[offset:]:
        if rec["subject"] not in rec["prompt"]:
            continue
        facts.append({"id": f"cf-{rec['case_id']}", "prompt": rec["prompt"],
                      "subject": rec["subject"], "object": rec["target_new"],
                      "paraphrases": [rec["rephrase_prompt"]]})
        if len(facts) == n:
            break
    return facts


def zsre_facts(n: int, offset: int = 0) -> list[dict]:
    """N question-form facts from zsRE (issue 21, item 4): "Question: <src> Answer:" with
    zsRE's edit target (`alt`) as the object, the rephrased question as paraphrase, the
    subject span when the question spells it, and zsRE's NQ question as the fact's own
    locality probe."""
    def question(text: str) -> str:
        return f"Question: {text.rstrip()} Answer:"

    facts = []
    for i, rec in enumerate(json.loads((DATA / "zsre-1037.json").read_text())[offset:], offset):
        fact = {"id": f"zsre-{i}", "prompt": question(rec["src"]), "object": rec["alt"],
                "paraphrases": [question(rec["rephrase"])],
                "locality": [{"prompt": question(rec["loc"].removeprefix("nq question: ")
                                                 + "?"), "answer": rec["loc_ans"]}]}
        if rec["subject"] in rec["src"]:
            fact["subject"] = rec["subject"]
        facts.append(fact)
        if len(facts) == n:
            break
    return facts


DATASETS = {"counterfact": counterfact_facts, "zsre": zsre_facts}


def make_project(root: Path, n: int, editor: str | None, batch: int | None,
                 dataset: str = "counterfact"):
    """A project holding n facts of `dataset` (reused if root already holds one)."""
    import yaml

    from kbsync.config import Config, Retry, render_config
    from kbsync.project import default_fallback, find_project, init_project

    if (root / "kbsync.yaml").exists():
        return find_project(root)
    project = init_project(root, editor=editor or "alphaedit")
    for old in project.facts_dir.iterdir():
        old.unlink()
    (project.facts_dir / f"{dataset}.yaml").write_text(
        yaml.safe_dump({"version": 1, "facts": DATASETS[dataset](n)}, allow_unicode=True,
                       sort_keys=False), encoding="utf-8")
    name = editor or "alphaedit"
    # kbsync init's retry settings (its fallback editor) with the editor and batch asked for
    config = Config(editor=name, retry=Retry(fallback_editor=default_fallback(name)),
                    **({"batch_size": batch} if batch else {}))
    project.config_path.write_text(render_config(config), encoding="utf-8")
    return find_project(root)


def fresh_project(root: Path):
    """A project with nothing applied beside `root` (issue 22: `ask` at HEAD within 2x of
    a fresh project's)."""
    from kbsync.project import find_project, init_project

    fresh = root.parent / f"{root.name}-fresh"
    return find_project(fresh) if (fresh / "kbsync.yaml").exists() else init_project(fresh)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(root: Path, n: int, editor: str | None, batch: int | None,
        dataset: str = "counterfact") -> dict:
    from kbsync.apply import apply
    from kbsync.editing.rebuild import load_at
    from kbsync.history import ask, log
    from kbsync.project import compute_plan
    from kbsync.report import build_report
    from kbsync.sync.refresh import refresh

    project = make_project(root, n, editor, batch, dataset)
    plan, plan_s = timed(lambda: compute_plan(project))
    sizes = []          # the batch size apply used (kbsync.yaml's, else the editor's)
    result, apply_s = timed(lambda: apply(project, emit=lambda e: sizes.append(
        e["batch_size"]) if e.get("type") == "edits" else None))
    attempted = len(result.applied) + len(result.rejected)
    report, _ = timed(lambda: refresh(project))
    head = project.snapshots().head()
    _, head_load_s = timed(lambda: load_at(project, head, with_editor=False))
    _, base_load_s = timed(lambda: load_at(project, None, with_editor=False))
    first = next(iter(plan.requests)).prompt if plan.requests else "The Eiffel Tower is in"
    _, ask_s = timed(lambda: ask(project, first))
    _, fresh_ask_s = timed(lambda: ask(fresh_project(root), first))
    _, log_s = timed(lambda: log(project, limit=20))
    _, report_s = timed(lambda: build_report(project, root / "report"))
    committed = len(result.applied) + len(result.known)
    return {"dataset": dataset, "n": n, "editor": project.config.editor, "batch": sizes[0] if sizes else project.config.batch_size,
            "plan_s": plan_s, "apply_s": apply_s,
            "s_per_fact": apply_s / attempted if attempted else 0.0,
            "committed": len(result.applied), "known": len(result.known),
            "rejected": len(result.rejected), "repaired": len(result.repaired),
            "drifted": len(report.drifted),
            "bytes_per_fact": folder_bytes(project.kbsync_dir) / max(committed, 1),
            "head_load_s": head_load_s, "base_load_s": base_load_s, "ask_s": ask_s,
            "fresh_ask_s": fresh_ask_s,
            "log_s": log_s, "report_s": report_s}


COLUMNS = ["dataset", "n", "editor", "batch", "plan_s", "s_per_fact", "committed", "known",
           "rejected", "repaired", "drifted", "bytes_per_fact", "head_load_s", "base_load_s", "ask_s", "fresh_ask_s", "log_s",
           "report_s"]


def table_row(row: dict) -> str:
    cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, action="append", help="facts (repeatable)")
    parser.add_argument("--editor", help="default: the project default (kbsync init's)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="counterfact")
    parser.add_argument("--batch", type=int, help="edits per batch (default: kbsync.yaml's)")
    parser.add_argument("--workdir", type=Path, default=Path("apply-scale"),
                        help="projects go to WORKDIR/n<N> (zsre: WORKDIR/zsre-n<N>); an "
                             "existing one is resumed")
    parser.add_argument("--json", action="store_true", help="one JSON line per N")
    args = parser.parse_args(argv)
    if not args.json:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
    for n in args.n or [1000]:
        name = f"n{n}" if args.dataset == "counterfact" else f"{args.dataset}-n{n}"
        row = run(args.workdir / name, n, args.editor, args.batch, args.dataset)
        print(json.dumps(row) if args.json else table_row(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
