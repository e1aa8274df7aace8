#!/usr/bin/env python3
"""Print the keys of pool facts that a model already answers (first template, every
target token top-1, teacher forced). Feeds `build_example.py --keep`:

    python3 facts/known_keys.py --limit 80 > /tmp/keys.txt
    python3 facts/build_example.py --keep /tmp/keys.txt
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kbsync.facts.load import load_knowledge_base  # noqa: E402
from kbsync.lm.load import load_model  # noqa: E402
from kbsync.lm.score import target_nll  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--limit", type=int, default=80)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:   # the pool's relations live beside it
        for src in (HERE / "relations.yaml", HERE / "pool" / "counterfact_true.yaml"):
            shutil.copy(src, tmp)
        kb = load_knowledge_base(tmp)
    keys = sorted(kb.facts)
    prompts = [kb.prompts(k)[0] for k in keys]
    _, known = target_nll(load_model(args.model, device="cpu"), prompts,
                          [kb.facts[k].object for k in keys])
    chosen = [k for k, ok in zip(keys, known.tolist()) if ok][: args.limit]
    print(f"{int(known.sum())} of {len(keys)} pool facts known; keeping {len(chosen)}",
          file=sys.stderr)
    print("\n".join(chosen))


if __name__ == "__main__":
    main()
