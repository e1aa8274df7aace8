"""The side editors' shared front end: the rows a batch trains on, the input of the memory
layer at each row's key token, and suffix-only training steps.

Rows are the requests' prompts under context templates, with the target appended for
teacher forcing. Each row is
split at its key token (the subject's last token, or the prompt's last token): the memory
only ever acts from there on, so the tokens before it run once into a key/value cache and
the blocks below the memory layer are replayed (editing/prefix.py). A step runs the rest
with `side(x, out)` applied at the memory layer's out-projection."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from kbsync.editing.forcing import Forcing
from kbsync.editing.hooks import capture_mlp_inputs, run
from kbsync.editing.prefix import PrefixRunner, SplitBatch, split_at_subject, to_device
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode, render
from kbsync.lm import arch

KEYS = ("subject", "prompt")


@dataclass
class Rows:
    lm: object
    layer: int
    split: SplitBatch
    owner: torch.Tensor        # (n_edit_rows,) request of each edit row
    n_specs: int
    n_contexts: int
    forcing: Forcing
    runner: PrefixRunner
    x: torch.Tensor            # (rows, Q, d_in) memory-layer input on the suffix, float32
    out: torch.Tensor          # (rows, Q, d_out) its output without the step's side change

    @property
    def n_edit_rows(self) -> int:
        return self.n_specs * self.n_contexts

    @property
    def valid(self) -> torch.Tensor:
        """(rows, Q) real suffix tokens."""
        return self.split.suffix.attention_mask.bool()[..., None]

    def key_inputs(self) -> torch.Tensor:
        """(edit rows, d_in): the memory layer's input at each edit row's key token."""
        return self.x[: self.n_edit_rows, 0]

    def run(self, side) -> torch.Tensor:
        """Final hidden states of the suffix with out := side(x, out) at the memory layer."""
        def hook(_module, _inputs, output):
            return side(self.x, output.float()).to(output.dtype)
        handle = arch.mlp_out(self.lm.model, self.layer).register_forward_hook(hook)
        try:
            return self.runner()
        finally:
            handle.remove()

    def score(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-request mean target NLL, per-request "every target token is top-1 in every
        row")."""
        return self.forcing.per_request(hidden, self.lm.model.get_output_embeddings(),
                                        self.owner, self.n_specs, self.n_contexts)


def build_rows(lm, specs: list[EditSpec], contexts: list[str], layer: int, key: str) -> Rows:
    """Rows for the batch, run once (no gradients) to record the memory layer's input."""
    if key not in KEYS:
        raise ValueError(f"key must be one of {KEYS}, not {key!r}")
    texts, spans, targets = [], [], []
    for spec in specs:
        for ctx in contexts:
            text, span = render(ctx, spec.prompt, spec.subject)
            texts.append(text)
            spans.append(span if key == "subject" else (0, len(text)))
            targets.append(spec.target)
    batch = encode(lm.tokenizer, texts, spans, targets)
    split = to_device(split_at_subject(batch), lm.device)
    n_rows = len(specs) * len(contexts)
    forcing = Forcing.of(split.suffix, n_rows)
    owner = torch.arange(len(specs), device=lm.device).repeat_interleave(len(contexts))
    runner = PrefixRunner(lm.model, split, frozen_below=layer)
    seen: dict = {}

    def record(_module, inputs, output):
        seen["x"], seen["out"] = inputs[0].float(), output.float()
    handle = arch.mlp_out(lm.model, layer).register_forward_hook(record)
    try:
        runner()                     # records the blocks below `layer` for replay, too
    finally:
        handle.remove()
    return Rows(lm, layer, split, owner, len(specs), len(contexts), forcing, runner,
                seen["x"], seen["out"])


def fit(rows: Rows, params: list[torch.Tensor], side, *, steps: int, lr: float,
        margin=None, penalty=None, after_step=None, settle: int = 1,
        optimizer: str = "adam") -> dict:
    """Adam (or SGD) on `params` until every request's target is top-1 in every row, and
    margin() (if given) is 0, for `settle` consecutive steps, or `steps` ran out. The loss
    is the mean NLL + margin() + penalty(); the penalty does not hold the stop back."""
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(params, lr=lr)
    streak, step, nll, ok = 0, 0, None, None
    for step in range(1, steps + 1):
        hidden = rows.run(side)
        nll, ok = rows.score(hidden)
        extra = margin() if margin else torch.zeros((), device=nll.device)
        streak = streak + 1 if bool(ok.all()) and float(extra.detach()) <= 0 else 0
        if streak >= settle:
            break
        opt.zero_grad()
        (nll.mean() + extra + (penalty() if penalty else 0)).backward()
        opt.step()
        if after_step:
            with torch.no_grad():
                after_step()
    return {"steps": step, "nll": nll.detach().tolist(), "solved": int(ok.sum())}


def layer_states(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 layer: int) -> torch.Tensor:
    """The memory layer's input at every position, (B, T, d_in) float32; the blocks above
    it are skipped."""
    batch = SimpleNamespace(input_ids=input_ids.to(lm.device),
                            attention_mask=attention_mask.to(lm.device))
    store: dict = {}
    with torch.no_grad(), capture_mlp_inputs(lm.model, [layer], store):
        run(lm.model, batch, stop_after=layer)
    return store[layer].float()


def layer_inputs(lm, texts: list[str], layer: int, *, but_last: bool = False) -> torch.Tensor:
    """The memory layer's input at every real token of `texts` (with but_last: except
    each text's last token), (tokens, d_in) float32."""
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    states = layer_states(lm, enc["input_ids"], enc["attention_mask"], layer)
    keep = enc["attention_mask"].bool()
    if but_last:
        last = enc["attention_mask"].cumsum(1).argmax(1)        # the last real token
        keep[torch.arange(len(texts)), last] = False
    return states[keep.to(states.device)]


@contextmanager
def memory_off(model):
    """The model with every side memory suspended (an editor adds its own part itself)."""
    from kbsync.editing.side.memory import attached

    mems = list(attached(model).values())
    was = [m.enabled for m in mems]
    for m in mems:
        m.enabled = False
    try:
        yield
    finally:
        for m, w in zip(mems, was):
            m.enabled = w
