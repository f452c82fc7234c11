"""What explainers and scorers read about one feature: its statistics and its example windows as text, with
per-token activations, tagged by pool (explain / score) and kind (top / quantile / random / hard_negative).

Explainers may only read `explain` windows; scorers only `score` windows (the pools come from disjoint
contexts, see sampler.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saexplain.sampling.sampler import Example


@dataclass
class Window:
    tokens: list[str]
    acts: np.ndarray
    pool: str
    kind: str
    rank: int = 0
    decile: int | None = None
    context: int = -1
    start: int = 0

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_act(self) -> float:
        return float(self.acts.max()) if len(self.acts) else 0.0

    @property
    def activating(self) -> bool:
        return self.max_act > 0

    @property
    def peak(self) -> int:
        """Position of the strongest activation (the middle when it never fires)."""
        return int(self.acts.argmax()) if self.max_act > 0 else len(self.tokens) // 2

    def cut(self, n: int) -> tuple[list[str], np.ndarray]:
        """At most `n` tokens (and their activations) around the strongest one."""
        if len(self.tokens) <= n:
            return list(self.tokens), self.acts
        start = min(max(0, self.peak - (3 * n) // 4), len(self.tokens) - n)
        return list(self.tokens[start:start + n]), self.acts[start:start + n]

    def marked(self, positions: np.ndarray | None = None, left: str = "<<", right: str = ">>") -> str:
        """The text with the tokens at `positions` (default: where the feature fires) wrapped in markers;
        neighbouring marked tokens share one pair of markers."""
        on = self.acts > 0 if positions is None else np.isin(np.arange(len(self.tokens)), positions)
        out, inside = [], False
        for tok, m in zip(self.tokens, on):
            if m and not inside:
                lead = tok[: len(tok) - len(tok.lstrip())]
                out.append(lead + left + tok[len(lead):])
                inside = True
            elif not m and inside:
                out[-1] += right
                out.append(tok)
                inside = False
            else:
                out.append(tok)
        if inside:
            out[-1] += right
        return "".join(out)


@dataclass
class FeatureRecord:
    feature: int
    max_act: float  # over the whole cached corpus
    frequency: float = 0.0
    top_tokens: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    # corpus search over this feature's explain-pool contexts (sampling/search.py); None where the record was
    # made without a cache (explainers then go without it)
    search: Any = field(default=None, repr=False, compare=False)

    def pool(self, pool: str, kinds: tuple[str, ...] | None = None) -> list[Window]:
        return [w for w in self.windows if w.pool == pool and (kinds is None or w.kind in kinds)]

    def activating(self, pool: str) -> list[Window]:
        """Activating windows of a pool, strongest first."""
        return sorted((w for w in self.pool(pool, ("top", "quantile")) if w.activating), key=lambda w: -w.max_act)

    def negatives(self, pool: str) -> list[Window]:
        return self.pool(pool, ("random", "hard_negative"))

    def reference(self, how: str = "max") -> float:
        """The feature's reference activation level: its corpus max, or the mean max of its 10 strongest
        windows (explain + score pools) as SAGE's code does."""
        if how == "max":
            return self.max_act
        if how == "top10_mean":
            tops = sorted((w.max_act for w in self.windows if w.kind == "top"), reverse=True)[:10]
            return float(np.mean(tops)) if tops else self.max_act
        raise ValueError(f"unknown reference {how!r} (use max or top10_mean)")


def make_record(feature: int, stats: dict, examples: list[Example], contexts, search=None) -> FeatureRecord:
    """A record from the store's feature statistics, the sampler's examples, and the cached contexts."""
    windows = []
    for e in examples:
        strings, _ = contexts.window(e.context, e.start, e.end)
        windows.append(Window(strings, np.asarray(e.acts, np.float32), e.pool, e.kind, e.rank, e.decile,
                              e.context, e.start))
    return FeatureRecord(feature, float(stats["max_act"]), float(stats["frequency"]),
                         list(stats.get("top_tokens", [])), windows, search)
