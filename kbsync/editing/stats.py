"""Second moment C = E[k kᵀ] of the keys of an edited layer over a text corpus (§1.6).

The corpus ships with kbsync, all Wikipedia text under CC BY-SA 3.0: biography passages
(kbsync/data/corpus.txt, from WikiBio / SelfCheckGPT via KnowEdit and WISE) and the
WikiText-2 test articles (kbsync/data/wikitext.txt), about 416k tokens for SmolLM2. The
passages are drawn in one fixed shuffled order, so a sample of n tokens is a prefix of the
sample of 2n drawn from the same mix: doubling it measures the estimate's noise, not a
change of topic (benchmarks/stats_stability.py). The tail of corpus.txt is the perplexity
drift reference and is never sampled. Computed once per model fingerprint, layer set and
sample size, cached as safetensors, reused by every editor. Only the blocks up to the
highest requested layer run.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch
from tqdm import tqdm

from kbsync.editing.hooks import capture_mlp_inputs, run
from kbsync.lm.tokens import Batch
from kbsync.errors import EditorError
from kbsync.home import replace_cache_file
from kbsync.lm.load import cache_dir

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "corpus.txt"
WIKITEXT = DATA / "wikitext.txt"
DRIFT_HOLDOUT = 40     # the last passages of CORPUS: evaluate/drift.py's reference text


def sample_passages(corpus: str = "mixed") -> list[str]:
    """Every statistics passage, in the one fixed order all sample sizes share.

    corpus (hparam `stats_corpus`): `mixed`, the shipped biographies and WikiText shuffled
    together (the default); `biographies` alone, in file order (what the tiny test models'
    tokenizer was trained on); or the path of a UTF-8 text file of the user's own domain,
    one passage per line, read in order."""
    biographies = CORPUS.read_text().splitlines()[:-DRIFT_HOLDOUT]
    if corpus == "biographies":
        return biographies
    if corpus != "mixed":
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise EditorError(f"stats_corpus {corpus!r} is neither a shipped corpus nor a file",
                              hint="use mixed, biographies or the path of a text file")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    passages = biographies + WIKITEXT.read_text().splitlines()
    random.Random(0).shuffle(passages)
    return passages


def sample_digest(passages: list[str]) -> str:
    """Names the sample in the cache path, so statistics of another corpus or order (an
    older kbsync's, another `stats_corpus`) are never read back as this one's."""
    return hashlib.sha256("\n".join(passages).encode()).hexdigest()[:12]


def corpus_chunks(tokenizer, passages: list[str], max_tokens: int,
                  seq_len: int) -> list[list[int]]:
    """Token id windows of at most seq_len, up to max_tokens in total."""
    ids: list[int] = []
    for line in passages:
        ids.extend(tokenizer(line, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]


def _path(fingerprint: str, sample: str, layer: int, n_tokens: int) -> Path:
    return cache_dir() / "stats" / fingerprint / sample / f"layer{layer}-{n_tokens}.safetensors"


def second_moments(lm, layers: list[int], n_tokens: int = 200_000, corpus: str = "mixed",
                   seq_len: int = 256, batch_size: int = 16,
                   progress: bool = True) -> dict[int, torch.Tensor]:
    """{layer: C (d_in, d_in) float64}, from the disk cache where present."""
    from safetensors.torch import load_file, save_file

    passages = sample_passages(corpus)
    sample = sample_digest(passages)
    cached = {l: _path(lm.fingerprint, sample, l, n_tokens) for l in layers}
    result = {l: load_file(p)["mom2"] for l, p in cached.items() if p.exists()}
    missing = [l for l in layers if l not in result]
    if not missing:
        return result
    chunks = corpus_chunks(lm.tokenizer, passages, n_tokens, seq_len)
    sums = {l: None for l in missing}
    count = 0
    bar = tqdm(total=sum(map(len, chunks)), desc="covariance statistics", unit="tok",
               disable=None if progress else True, leave=False)
    for start in range(0, len(chunks), batch_size):
        group = chunks[start:start + batch_size]
        width = max(map(len, group))
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for i, c in enumerate(group):
            ids[i, :len(c)], mask[i, :len(c)] = torch.tensor(c), 1
        batch = Batch(ids.to(lm.device), mask.to(lm.device), None, None, [], [])
        store: dict = {}
        with torch.no_grad(), capture_mlp_inputs(lm.model, missing, store):
            run(lm.model, batch, stop_after=max(missing))
        keep = mask.bool().to(lm.device)
        for l in missing:
            k = store[l][keep].float()                    # (tokens, d_in)
            kkt = (k.T @ k).double().cpu()
            sums[l] = kkt if sums[l] is None else sums[l] + kkt
        count += int(keep.sum())
        bar.update(int(keep.sum()))
    bar.close()
    for l in missing:
        result[l] = sums[l] / count
        replace_cache_file(cached[l], lambda tmp, m=result[l]: save_file(
            {"mom2": m.contiguous()}, str(tmp), metadata={"tokens": str(count)}))
    return result


class MomentCache:
    """An editor's second moments for its layers (`hp.layers`), read once per model, not
    once per batch."""

    def __init__(self) -> None:
        self._of: str | None = None
        self._moments: dict[int, torch.Tensor] = {}

    def get(self, lm, hp) -> dict[int, torch.Tensor]:
        if self._of != lm.fingerprint:
            self._moments = second_moments(lm, list(hp.layers), hp.stats_tokens,
                                           hp.stats_corpus)
            self._of = lm.fingerprint
        return self._moments
