"""Per-feature examples from the latent cache, split into two disjoint pools.

Every context of the corpus belongs to exactly one pool, decided by a seeded hash of (feature, context):
an example drawn for the explain pool can never come from a context of the score pool, whatever the kind
(top, quantile, random negative, hard negative). delphi's default sampler draws its test examples from the
same contexts as the explanation examples; ours cannot.

Kinds per pool:
- top: the contexts with the highest max activation (one window per context, around its max token);
- quantile: `per_decile` contexts from each of 10 deciles of the activation range (0, max];
- random: contexts where the feature never fires, a random window of each;
- hard_negative: windows around an occurrence of one of the feature's top tokens in a context where the
  feature does not fire."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import Field

from saexplain.config import Config


class SamplingConfig(Config):
    cli_name: ClassVar[str] = "sampling"
    window: int = Field(32, ge=2, description="tokens per example window")
    explain_share: float = Field(0.5, gt=0, lt=1, description="share of contexts in the explain pool")
    explain_top: int = Field(20, ge=0, description="top examples in the explain pool")
    explain_per_decile: int = Field(1, ge=0, description="quantile examples per decile in the explain pool")
    score_top: int = Field(10, ge=0, description="top examples in the score pool")
    score_per_decile: int = Field(4, ge=0, description="quantile examples per decile in the score pool")
    random_negatives: int = Field(20, ge=0, description="random non-activating windows per pool")
    hard_negatives: int = Field(20, ge=0, description="hard negatives per pool")
    top_tokens: int = Field(5, ge=1, description="top tokens used to find hard negatives")
    seed: int = Field(0, description="seed: the same seed gives the same examples")


@dataclass
class Example:
    pool: str
    kind: str
    rank: int
    context: int
    start: int
    end: int
    max_act: float
    decile: int | None = None
    acts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # per token of the window

    def row(self) -> dict:
        return {"pool": self.pool, "kind": self.kind, "rank": self.rank, "context": self.context,
                "start": self.start, "end": self.end, "max_act": self.max_act, "decile": self.decile}


def pool_of(feature: int, contexts: np.ndarray, seed: int, explain_share: float) -> np.ndarray:
    """True where a context belongs to the explain pool for this feature (seeded, stable)."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{feature}".encode()).digest()[:8], "little")
    x = (contexts.astype(np.uint64) + np.uint64(key & 0xFFFFFFFF)) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return (x % np.uint64(1 << 20)).astype(np.float64) / (1 << 20) < explain_share


class Sampler:
    def __init__(self, tokens: np.ndarray, cfg: SamplingConfig):
        """`tokens`: the cached corpus's [n_contexts, L] token ids (BOS at position 0)."""
        self.tokens = tokens
        self.cfg = cfg
        self.n_ctx, self.L = tokens.shape
        if cfg.window > self.L - 1:
            raise ValueError(f"window {cfg.window} is longer than a context's {self.L - 1} text tokens")

    def _window_around(self, pos: int) -> tuple[int, int]:
        w = self.cfg.window
        start = int(np.clip(pos - (3 * w) // 4, 1, self.L - w))
        return start, start + w

    def sample(self, feature: int, ctx: np.ndarray, pos: np.ndarray, val: np.ndarray) -> list[Example]:
        """`ctx`, `pos`, `val`: every non-zero activation of the feature (LatentCache.collect)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, feature])
        val = val.astype(np.float32)
        # per context: its max activation and where
        order = np.lexsort((-val, ctx))
        c_sorted = ctx[order]
        first = np.r_[True, c_sorted[1:] != c_sorted[:-1]] if len(order) else np.zeros(0, bool)
        act_ctx, act_pos, act_max = c_sorted[first], pos[order][first], val[order][first]
        explain_mask = pool_of(feature, act_ctx, cfg.seed, cfg.explain_share)
        all_ctx = np.arange(self.n_ctx)
        all_explain = pool_of(feature, all_ctx, cfg.seed, cfg.explain_share)
        active = np.zeros(self.n_ctx, bool)
        active[act_ctx] = True
        top_max = float(act_max.max()) if len(act_max) else 0.0

        def windows_acts(c: int, start: int, end: int) -> np.ndarray:
            out = np.zeros(end - start, np.float32)
            m = (ctx == c) & (pos >= start) & (pos < end)
            out[pos[m] - start] = val[m]
            return out

        examples: list[Example] = []
        for pool, in_pool, n_top, per_decile in (
                ("explain", explain_mask, cfg.explain_top, cfg.explain_per_decile),
                ("score", ~explain_mask, cfg.score_top, cfg.score_per_decile)):
            cs, ps, ms = act_ctx[in_pool], act_pos[in_pool], act_max[in_pool]
            by_max = np.argsort(-ms, kind="stable")
            taken = set()
            for r, i in enumerate(by_max[:n_top]):
                s, e = self._window_around(int(ps[i]))
                examples.append(Example(pool, "top", r, int(cs[i]), s, e, float(ms[i])))
                taken.add(int(cs[i]))
            if top_max > 0 and per_decile:
                decile = np.minimum((ms / top_max * 10).astype(int), 9)
                r = 0
                for d in range(10):
                    cand = [i for i in np.flatnonzero(decile == d) if int(cs[i]) not in taken]
                    for i in rng.permutation(cand)[:per_decile] if cand else []:
                        s, e = self._window_around(int(ps[i]))
                        examples.append(Example(pool, "quantile", r, int(cs[i]), s, e, float(ms[i]), decile=d))
                        taken.add(int(cs[i]))
                        r += 1
            pool_ctx = all_ctx[(all_explain if pool == "explain" else ~all_explain) & ~active]
            for r, c in enumerate(rng.permutation(pool_ctx)[: cfg.random_negatives]):
                s = int(rng.integers(1, self.L - cfg.window + 1))
                examples.append(Example(pool, "random", r, int(c), s, s + cfg.window, 0.0))
            examples += self._hard_negatives(pool, pool_ctx, act_ctx, act_pos, act_max, rng)
        for ex in examples:
            ex.acts = windows_acts(ex.context, ex.start, ex.end)
            if ex.kind in ("random", "hard_negative"):
                assert ex.acts.max(initial=0) == 0, "negative examples must not activate the feature"
        return examples

    def _hard_negatives(self, pool, pool_ctx, act_ctx, act_pos, act_max, rng) -> list[Example]:
        if not self.cfg.hard_negatives or len(pool_ctx) == 0:
            return []
        from saexplain.cache.latents import top_token_ids

        top_ids = top_token_ids(self.tokens, act_ctx, act_pos, act_max, self.cfg.top_tokens)
        if len(top_ids) == 0:
            return []
        sub = np.asarray(self.tokens[pool_ctx])
        hit_c, hit_p = np.nonzero(np.isin(sub[:, 1:], top_ids))
        if len(hit_c) == 0:
            return []
        pick = rng.permutation(len(hit_c))
        out, seen = [], set()
        for i in pick:
            c = int(pool_ctx[hit_c[i]])
            if c in seen:
                continue
            seen.add(c)
            s, e = self._window_around(int(hit_p[i]) + 1)
            out.append(Example(pool, "hard_negative", len(out), c, s, e, 0.0))
            if len(out) == self.cfg.hard_negatives:
                break
        return out
