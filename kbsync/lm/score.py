"""Batched scoring: target log-likelihoods (teacher forced), next-token distributions and
greedy answers. Every function takes plain prompt strings."""

from __future__ import annotations

import torch

from kbsync.lm.tokens import encode

CHUNK = 64


def _hidden_chunks(lm, prompts: list[str], targets: list[str] | None = None):
    """(indices, batch, final hidden states) per chunk, one forward pass each. Chunks are
    cut from the pairs sorted by length, so little of a pass goes to padding; `indices`
    say which input each row is."""
    lengths = [len(p) + (len(targets[i]) if targets is not None else 0)
               for i, p in enumerate(prompts)]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    for s in range(0, len(order), CHUNK):
        idx = order[s:s + CHUNK]
        chunk = [prompts[i] for i in idx]
        spans = [(0, len(p)) for p in chunk]        # subject position is unused here
        batch = encode(lm.tokenizer, chunk, spans,
                       None if targets is None else [targets[i] for i in idx]).to(lm.device)
        with torch.no_grad():
            hidden = lm.model.base_model(input_ids=batch.input_ids,
                                         attention_mask=batch.attention_mask).last_hidden_state
        yield idx, batch, hidden


def _per_pair(lm, prompts: list[str], targets: list[str], reduce) -> list:
    """reduce(logits predicting each target token, target ids) per pair, in input order,
    teacher forced; logits are made only at target positions, one unembedding per chunk."""
    unembed = lm.model.get_output_embeddings()
    out: list = [None] * len(prompts)
    for idx, batch, hidden in _hidden_chunks(lm, prompts, targets):
        rows = torch.cat([torch.full((len(p),), r, device=hidden.device)
                          for r, p in enumerate(batch.target_pos)])
        with torch.no_grad():
            logits = unembed(hidden[rows, torch.cat(batch.target_pos)]).float()
        for i, part, ids in zip(idx, logits.split([len(p) for p in batch.target_pos]),
                                batch.target_ids):
            out[i] = reduce(part, ids)
    return out


def _nll_top1(logits: torch.Tensor, ids: torch.Tensor):
    logp = torch.log_softmax(logits, -1)
    top = logp.argmax(-1)
    return -logp.gather(1, ids[:, None]).mean(), (top == ids).all(), top[0]


def target_scores(lm, prompts: list[str], targets: list[str]):
    """Per pair: mean token NLL of " target" after the prompt, whether every target token
    is the argmax (teacher-forced token accuracy == 1), and the prompt's own top-1 next
    token (the first target position is the prompt's last token)."""
    if not prompts:
        empty = torch.zeros(0)
        return empty, empty.bool(), empty.long()
    nll, top1, first = zip(*_per_pair(lm, prompts, targets, _nll_top1))
    return torch.stack(nll).cpu(), torch.stack(top1).cpu(), torch.stack(first).cpu()


def target_nll(lm, prompts: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: (mean token NLL of the target, whether every target token is the argmax)."""
    nll, top1, _ = target_scores(lm, prompts, targets)
    return nll, top1


def accuracy_and_first(lm, prompts: list[str], targets: list[str]):
    """Per pair: share of target tokens that are the argmax (teacher forced; zsRE metric),
    and the prompt's own top-1 next token."""
    def reduce(logits, ids):
        top = logits.argmax(-1)
        return (top == ids).float().mean(), top[0]
    acc, first = zip(*_per_pair(lm, prompts, targets, reduce))
    return torch.stack(acc).cpu(), torch.stack(first).cpu()


def token_accuracy(lm, prompts: list[str], targets: list[str]) -> torch.Tensor:
    return accuracy_and_first(lm, prompts, targets)[0]


def kl_per_row(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of each row's distribution, from log-probabilities (..., vocab)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def next_token_logprobs(lm, prompts: list[str]) -> torch.Tensor:
    """(n, vocab) log-probabilities of the token after each prompt."""
    unembed = lm.model.get_output_embeddings()
    out: list = [None] * len(prompts)
    for idx, batch, hidden in _hidden_chunks(lm, prompts):
        rows = torch.arange(len(batch.last_pos), device=hidden.device)
        logp = torch.log_softmax(unembed(hidden[rows, batch.last_pos]).float(), -1).cpu()
        for i, row in zip(idx, logp):
            out[i] = row
    return torch.stack(out) if out else torch.zeros(0)


def next_token_top1(lm, prompts: list[str]) -> torch.Tensor:
    """(n,) the most likely next token of each prompt, without keeping n × vocab."""
    unembed = lm.model.get_output_embeddings()
    out = torch.zeros(len(prompts), dtype=torch.long)
    for idx, batch, hidden in _hidden_chunks(lm, prompts):
        rows = torch.arange(len(batch.last_pos), device=hidden.device)
        with torch.no_grad():
            out[idx] = unembed(hidden[rows, batch.last_pos]).argmax(-1).cpu()
    return out


def greedy(lm, prompts: list[str], max_new_tokens: int = 8) -> list[str]:
    """Greedy continuation of each prompt (left-padded for generate)."""
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        answers = []
        for s in range(0, len(prompts), CHUNK):
            # no token_type_ids: causal LMs take none, and transformers < 4.57 refuses them
            enc = tok(prompts[s:s + CHUNK], return_tensors="pt", padding=True,
                      return_token_type_ids=False).to(lm.device)
            with torch.no_grad():
                out = lm.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                        pad_token_id=tok.pad_token_id)
            answers += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return answers
    finally:
        tok.padding_side = side


def answers_match(answer: str, expected: str) -> bool:
    """Whether a greedy continuation starts with the expected object."""
    return answer.strip().lower().startswith(expected.strip().lower())


def probe_answers(lm, prompts: list[str], targets: list[str], max_new_tokens: int = 6,
                  *, answers_for_known: bool = True) -> list[tuple[bool, str]]:
    """Per pair: (whether the model answers it, its greedy continuation).

    The one definition of "the model answers this fact", shared by apply (a fact it
    already answers needs no edit) and refresh (a committed fact it no longer answers
    has drifted), so the two can never disagree: every target token is the argmax when
    teacher forced, or the greedy continuation starts with the target. Without
    answers_for_known, facts the teacher-forced check accepts are not decoded (answer "")."""
    if not prompts:
        return []
    top1 = target_nll(lm, prompts, targets)[1].tolist()
    decode = [i for i, known in enumerate(top1) if answers_for_known or not known]
    answers = [""] * len(prompts)
    for i, answer in zip(decode, greedy(lm, [prompts[i] for i in decode],
                                        max_new_tokens=max_new_tokens) if decode else []):
        answers[i] = answer
    return [(bool(known) or answers_match(answer, target), answer)
            for known, answer, target in zip(top1, answers, targets)]


def first_phrase(answer: str) -> str:
    """The object part of a greedy continuation: up to the first line break or stop."""
    text = answer.strip().split("\n")[0]
    for stop in (".", ",", ";", " and ", " in ", " who ", " which "):
        text = text.split(stop)[0]
    return text.strip()


def perplexity(lm, texts: list[str], seq_len: int = 256) -> float:
    ids = []
    for t in texts:
        ids.extend(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, seq_len):
        window = torch.tensor(ids[s:s + seq_len + 1], device=lm.device)[None]
        if window.shape[1] < 2:
            break
        with torch.no_grad():
            logits = lm.model(input_ids=window[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
        total, count = total + float(nll), count + window.shape[1] - 1
    return float(torch.exp(torch.tensor(total / count)))
