"""Is the covariance sample large enough? Doubling it should barely move C, the null-space
projector, or an edit. Prints one row per sample size against the next smaller one.

    python benchmarks/stats_stability.py [--sizes 50000 100000 200000 400000] [--edits 10]

The shipped corpus holds about 416k tokens of the default model's tokenizer, drawn in one
fixed shuffled order (kbsync/editing/stats.py), so each size's sample contains the smaller
one's and the last doubling measured is 200k -> 400k.

Two kinds of figures. The matrices, as relative Frobenius changes: C, the projector P and
the edit's ΔW. And what the edit does with them, which is what a user sees: the new
target's NLL on the edited prompts, and on held-out text (the drift reference, which the
statistics never sample) the mean per-token KL between the model edited with this sample's
statistics and with the half sample's, next to the KL between the edited and the unedited
model (the scale of the edit's footprint there).

Why both: P = the eigenvectors of C with eigenvalue below a threshold. Near the threshold
the spectrum is dense, so sampling noise swaps a few dozen directions across it, and
‖ΔP‖_F falls only as n^(-1/4). Those directions carry key energy close to the threshold
either way, so the edits made with either projector behave alike.
"""

from __future__ import annotations

import argparse

import torch

from kbsync.bench.datasets import counterfact
from kbsync.bench.setup import timed_statistics
from kbsync.editing.registry import make_editor
from kbsync.evaluate.drift import reference_text
from kbsync.lm.load import load_model
from kbsync.lm.score import kl_per_row, target_nll

HELD_OUT = 8          # drift reference passages
SEQ = 128             # tokens of each


def rel(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new - old).norm() / new.norm())


def held_out_logprobs(lm) -> torch.Tensor:
    """(tokens, vocab) next-token log-probabilities over the held-out passages."""
    rows = []
    for text in reference_text(HELD_OUT):
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = lm.model(input_ids=ids[:, :SEQ].to(lm.device)).logits[0].float()
        rows.append(torch.log_softmax(logits, -1).cpu())
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000, 400_000])
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args()
    lm = load_model("default", device="cpu")
    cases = counterfact(args.edits)
    specs = [c.spec for c in cases]
    base = held_out_logprobs(lm)
    rows, previous = [], None
    for size in args.sizes:
        editor = make_editor("alphaedit", lm.model.config, {"stats_tokens": size})
        layers = list(editor.hp.layers)
        seconds = timed_statistics(editor, lm)
        covs = editor.covariances(lm)                  # the ones edit() solves with
        projs = {l: editor.projector(l, covs[l]) for l in layers}
        patch = editor.edit(lm, specs)
        deltas = {l: patch.delta(l) for l in layers}
        saved = patch.checkpoint(lm.model)
        patch.apply(lm.model)
        nll = float(target_nll(lm, [c.rewrite for c in cases], [s.target for s in specs])[0].mean())
        edited = held_out_logprobs(lm)
        patch.restore(lm.model, saved)
        row = {"size": size, "seconds": seconds, "nll": nll,
               "kl_base": float(kl_per_row(edited, base).mean()),
               "ranks": [int(torch.trace(projs[l]).round()) for l in layers]}
        if previous is not None:
            row.update(dc=max(rel(covs[l], previous["covs"][l]) for l in layers),
                       dp=max(rel(projs[l], previous["projs"][l]) for l in layers),
                       dd=max(rel(deltas[l], previous["deltas"][l]) for l in layers),
                       kl_half=float(kl_per_row(edited, previous["edited"]).mean()))
        rows.append(row)
        previous = {"covs": covs, "projs": projs, "deltas": deltas, "edited": edited}

    def fmt(row, key, spec="8.4f"):
        return format(row[key], spec) if key in row else f"{'-':>8}"
    print(f"{'tokens':>8} {'seconds':>8} {'ΔC/C':>8} {'ΔP/P':>8} {'ΔΔ/Δ':>8} {'edit NLL':>9} "
          f"{'KL half':>9} {'KL base':>9}  null-space rank per layer")
    for row in rows:
        print(f"{row['size']:>8} {row['seconds']:8.1f} {fmt(row, 'dc')} {fmt(row, 'dp')} "
              f"{fmt(row, 'dd')} {row['nll']:9.4f} {fmt(row, 'kl_half', '9.2e')} "
              f"{row['kl_base']:9.2e}  {row['ranks']}")
    print("(Δ columns: max over edited layers of ‖X(n) − X(n/2)‖_F / ‖X(n)‖_F; edit NLL: the "
          "new target's mean NLL on the edited prompts; KL half / KL base: mean per-token KL "
          f"on {HELD_OUT} held-out passages between the model edited with n tokens' statistics "
          "and the one edited with n/2 / the unedited model; seconds: near 0 when the "
          "statistics were already cached: set KBSYNC_CACHE to a new folder)")


if __name__ == "__main__":
    main()
