"""Context templates: short texts the model writes itself, used as prefixes ("<text>. {}")
so that keys and target vectors hold across contexts (MEMIT §1.3). Sampled with a fixed
seed and cached on disk per model fingerprint, so runs are reproducible."""

from __future__ import annotations

import json

import torch

from kbsync.lm.load import cache_dir

SEEDS = ("The", "Therefore", "Because", "I", "You")


def context_templates(lm, count: int, length: int, seed: int = 0) -> list[str]:
    """["{}"] followed by `count` generated prefixes."""
    if count == 0:
        return ["{}"]
    path = cache_dir() / "contexts" / f"{lm.fingerprint}-{count}-{length}-{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    model, tok = lm.model, lm.tokenizer
    prefixes = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(count):
            enc = tok(SEEDS[i % len(SEEDS)], return_tensors="pt",
                      return_token_type_ids=False).to(lm.device)
            out = model.generate(**enc, do_sample=True, top_k=5, max_new_tokens=length,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0], skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            prefixes.append(text + ". {}")
    templates = ["{}"] + prefixes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(templates))
    return templates
