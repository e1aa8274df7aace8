"""Developer script: copy the benchmark subsets and the statistics corpus into the repo
from ../shared/data (never read at kbsync run time). Run from the repo root:
    python3 benchmarks/data/build.py
"""

import json
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HERE = Path(__file__).resolve().parent
PACKAGE_DATA = HERE.parents[1] / "kbsync" / "data"


def corpus() -> None:
    """Wikipedia biography passages (WikiBio via KnowEdit and WISE; CC BY-SA 3.0)."""
    seen, passages = set(), []
    for rec in json.loads((SHARED / "knowedit/WikiBio/wikibio-test-all.json").read_text()):
        for text in (rec["text"], rec["labels"]):
            passages.append(text)
    for name in ("hallucination-train.json", "hallucination-edit.json"):
        for rec in json.loads((SHARED / "wise/hallucination" / name).read_text()):
            passages.append(f"{rec['prompt']} {rec['target_new']}")
    unique = []
    for p in passages:
        p = " ".join(p.split())
        if p and p not in seen:
            seen.add(p)
            unique.append(p)
    (PACKAGE_DATA / "corpus.txt").write_text("\n".join(unique) + "\n")
    print("corpus passages:", len(unique))


def benchmarks() -> None:
    shutil.copy(SHARED / "counterfact/easyedit/counterfact-edit.json", HERE / "counterfact-edit.json")
    shutil.copy(SHARED / "zsre/zsre_mend_eval_portability_1037.json", HERE / "zsre-1037.json")


if __name__ == "__main__":
    corpus()
    benchmarks()
