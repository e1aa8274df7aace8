"""The UltraEdit hyperparameter search of benchmarks/RESULTS.md: N sequential CounterFact
edits in batches of B per configuration, then efficacy, generalization, locality (top-1 of
the neighbour prompts against the unedited model) and perplexity drift of all N.

    python benchmarks/ultraedit_search.py N B "{'eta': 1e-4, ...}" ["editor@{...}" ...]

Each configuration starts from the unedited weights (restored bit for bit). The 100-edit
rows of RESULTS.md came from an earlier form of this script that scored locality with
next_token_logprobs(...).argmax(-1): the same top-1."""

from __future__ import annotations

import ast
import sys
import time


def run(n: int, batch: int, configs: list[str]) -> None:
    import torch

    from kbsync.bench.datasets import DATASETS
    from kbsync.editing.patch import restore_layers, save_layers
    from kbsync.editing.registry import make_editor
    from kbsync.evaluate.drift import BENCH_PASSAGES, reference_text
    from kbsync.evaluate.metrics import rewrite_scores
    from kbsync.lm.load import load_model
    from kbsync.lm.score import next_token_top1, perplexity

    torch.manual_seed(0)
    lm = load_model("default")
    cases = DATASETS["counterfact"](n, 0)
    neighbours = [c.neighbour for c in cases]
    pre_top1 = next_token_top1(lm, neighbours)
    reference = reference_text(BENCH_PASSAGES)
    ppl0 = perplexity(lm, reference)
    for config in configs:
        name, hp = config.split("@", 1) if "@" in config else ("ultraedit", config)
        ed = make_editor(name, lm.model.config, ast.literal_eval(hp))
        saved = save_layers(lm.model, ed.weight_layers)
        t0 = time.time()
        for s in range(0, n, batch):
            patch = ed.edit(lm, [c.spec for c in cases[s:s + batch]])
            patch.apply(lm.model)
            ed.accept(patch)
        seconds = time.time() - t0
        eff = rewrite_scores(lm, cases, "counterfact").mean().item()
        gen = rewrite_scores(lm, cases, "counterfact", paraphrase=True).mean().item()
        loc = (next_token_top1(lm, neighbours) == pre_top1).float().mean().item()
        drift = perplexity(lm, reference) / ppl0 - 1
        print(config, f"eff {eff:.3f} gen {gen:.3f} loc {loc:.3f} ppl {drift:+.3f} "
              f"s/edit {seconds / n:.3f}", flush=True)
        restore_layers(lm.model, saved)


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
