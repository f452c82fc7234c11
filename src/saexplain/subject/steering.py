"""Steering the subject model along a feature's decoder direction: a forward hook on the hooked block adds
`strength × direction` to the residual stream at every position, with the full model running (the output side
is what is measured). Strengths are calibrated by bisection so that the next-token distribution moves by a
target KL divergence from the clean one (Gur-Arieh et al.'s output evaluation)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from saexplain.subject.model import SubjectModel


@contextmanager
def steered(subject: SubjectModel, direction: torch.Tensor | None, strength: float) -> Iterator[None]:
    """Inside the block, every forward adds strength × direction at the hookpoint (None: no change)."""
    if direction is None or strength == 0:
        yield
        return
    delta = (strength * direction).to(subject.device, subject.dtype)

    def add(_module, args, kwargs, output=None):
        if output is None:  # pre-hook on block 0 (blocks.0.hook_resid_pre)
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = hidden + delta
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    last = subject.hookpoint.last_block
    if last >= 0:
        handle = subject.layers[last].register_forward_hook(lambda m, a, kw, out: add(m, a, kw, out),
                                                            with_kwargs=True)
    else:
        handle = subject.layers[0].register_forward_pre_hook(lambda m, a, kw: add(m, a, kw), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _batch(subject: SubjectModel, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids + mask (the last position of every row is its last token)."""
    ids = [i for i, _ in subject.tokenize(prompts)]
    width = max(len(i) for i in ids)
    pad = subject.tokenizer.pad_token_id or 0
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, seq in enumerate(ids):
        x[r, width - len(seq):] = torch.tensor(seq)
        mask[r, width - len(seq):] = 1
    return x.to(subject.device), mask.to(subject.device)


@torch.inference_mode()
def next_token_logprobs(subject: SubjectModel, prompts: Sequence[str], direction=None, strength: float = 0.0
                        ) -> torch.Tensor:
    x, mask = _batch(subject, prompts)
    with steered(subject, direction, strength):
        logits = subject.model(input_ids=x, attention_mask=mask, use_cache=False).logits[:, -1].float()
    return torch.log_softmax(logits, -1)


def kl_from_clean(clean: torch.Tensor, steered_lp: torch.Tensor) -> float:
    """Mean over prompts of KL(clean ‖ steered) of the next-token distribution."""
    return float((clean.exp() * (clean - steered_lp)).sum(-1).mean())


@torch.inference_mode()
def residual_norm(subject: SubjectModel, prompts: Sequence[str]) -> float:
    """Mean L2 norm of the residual stream at the hookpoint over the prompts' text tokens (the natural unit
    of a steering strength for a unit direction)."""
    x, mask = _batch(subject, prompts)
    h = subject.hidden(x, mask).float()
    keep = mask.bool().clone()
    if subject.prepend_bos:  # BOS is an attention-sink outlier, not typical of the stream
        keep &= x != subject.tokenizer.bos_token_id
    return float(h.norm(dim=-1)[keep].mean())


def calibrate(subject: SubjectModel, prompts: Sequence[str], direction: torch.Tensor, target_kl: float,
              sign: float = 1.0, max_strength: float | None = None, steps: int = 12) -> tuple[float, float]:
    """(strength, KL reached): the smallest |strength| (with `sign`) whose KL reaches `target_kl`, by bisection
    on [0, max_strength] (default: 4 × the mean residual norm); max_strength when even that stays below."""
    if max_strength is None:
        max_strength = 4.0 * residual_norm(subject, prompts)
    clean = next_token_logprobs(subject, prompts)
    kl_hi = kl_from_clean(clean, next_token_logprobs(subject, prompts, direction, sign * max_strength))
    if kl_hi < target_kl:
        return sign * max_strength, kl_hi
    lo, hi = 0.0, max_strength
    for _ in range(steps):
        mid = (lo + hi) / 2
        if kl_from_clean(clean, next_token_logprobs(subject, prompts, direction, sign * mid)) < target_kl:
            lo = mid
        else:
            hi = mid
    return sign * hi, kl_from_clean(clean, next_token_logprobs(subject, prompts, direction, sign * hi))


@torch.inference_mode()
def continuations(subject: SubjectModel, prompts: Sequence[str], direction=None, strength: float = 0.0,
                  max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations (text after each prompt) with the model steered."""
    x, mask = _batch(subject, prompts)
    pad = subject.tokenizer.pad_token_id or 0
    with steered(subject, direction, strength):
        out = subject.model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, top_p=None, top_k=None)
    return [subject.tokenizer.decode(row[x.shape[1]:], skip_special_tokens=True) for row in out]


@torch.inference_mode()
def readout(subject: SubjectModel, prompts: Sequence[str], direction: torch.Tensor, k: int = 8,
            target_kl: float = 0.5) -> tuple[list[tuple[str, float]], float]:
    """The output side of a direction as tokens: with the direction added at the strength that moves the
    next-token distribution by `target_kl`, the `k` tokens whose probability rises most (mean over the
    prompts), with that rise; and the strength used."""
    strength, _ = calibrate(subject, prompts, direction, target_kl)
    clean = next_token_logprobs(subject, prompts).exp()
    pushed = next_token_logprobs(subject, prompts, direction, strength).exp()
    rise = (pushed - clean).mean(0)
    top = rise.topk(k)
    tok = subject.tokenizer
    return [(tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)], strength
