"""Corpus search for explainers: the contexts of the latent cache where a word (or a regex) occurs, with one
feature's cached activation on the matched token and on the token after it.

Only the feature's *explain-pool* contexts are searched (the same seeded split as the sampler, `pool_of`): a
context of the score pool is never returned, so an explainer that tests its hypotheses on real text cannot see
the windows its explanation will be scored on. A search is a measurement (counts of where the feature fires),
never text for an LLM to grade.

The object holds paths, not arrays: it pickles small (Ray workers open the files themselves) and opens the
tokenised corpus and the cache on first use, once per process."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saexplain.sampling.sampler import pool_of

MAX_PATTERN = 60


@dataclass
class Hit:
    context: int
    token: int  # position of the token holding the match's last character
    at: float  # the feature's cached activation on that token
    after: float  # ... and on the token after it (0 at the context's end)
    snippet: str  # a few tokens around the match, the matched token in [brackets]
    following: str = ""  # the token after the match ("" at the context's end)


@dataclass
class SearchResult:
    pattern: str
    matches: int  # matches in the explain-pool contexts (every one, not only the hits read)
    hits: list[Hit] = field(default_factory=list)  # up to `limit`, spread evenly over the matches

    def share(self, threshold: float, where: str = "either") -> float:
        """Share of the hits read whose activation reaches `threshold` on the match ("at"), on the token after
        it ("after") or on either."""
        if not self.hits:
            return 0.0
        pick = {"at": lambda h: h.at, "after": lambda h: h.after, "either": lambda h: max(h.at, h.after)}[where]
        return float(np.mean([pick(h) >= threshold for h in self.hits]))


def word_pattern(text: str) -> re.Pattern:
    """A plain word or phrase as a case-insensitive pattern, whole words where it begins / ends with a letter or
    digit ("son" does not match "reason"; '"' matches every quotation mark). `re:` starts a regex. (`token:`
    patterns are matched per token, see `CorpusSearch.search`.)"""
    text = text.strip()
    if text.startswith("re:"):
        return re.compile(text[3:], re.IGNORECASE)
    body = re.escape(text)
    left = r"(?<!\w)" if text[:1].isalnum() else ""
    right = r"(?!\w)" if text[-1:].isalnum() else ""
    return re.compile(left + body + right, re.IGNORECASE)


class CorpusSearch:
    """Search over one cache's contexts (the tokenised corpus at `contexts_path`, activations from the cache at
    `cache_path`), split into explain / score pools per feature as the sampler splits them."""

    def __init__(self, cache_path: Path, contexts_path: Path, seed: int, explain_share: float):
        self.cache_path, self.contexts_path = Path(cache_path), Path(contexts_path)
        self.seed, self.explain_share = seed, explain_share
        self._opened = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_opened"} | {"_opened": None}

    def _open(self):
        if self._opened is None:
            from saexplain.cache.latents import LatentCache
            from saexplain.data.contexts import Contexts

            contexts = Contexts.open(self.contexts_path)
            cache = LatentCache(self.cache_path)
            strings = [contexts.window(c, 0, contexts.length)[0] for c in range(cache.n_contexts)]
            starts = [np.concatenate([[0], np.cumsum([len(s) for s in toks])]) for toks in strings]
            self._opened = (cache, strings, ["".join(toks) for toks in strings], starts)
        return self._opened

    def search(self, feature: int, pattern: str, limit: int = 30) -> SearchResult:
        """Matches of `pattern` in the feature's explain-pool contexts: a word or phrase (`word_pattern`), `re:` a
        regex, `token:` one token exactly (stripped, any case: "token:not" is the token " not" or "Not"); the
        activations of up to `limit` of them, spread evenly over all matches (deterministic)."""
        pattern = " ".join(pattern.split())[:MAX_PATTERN]
        by_token = pattern.startswith("token:")
        if not pattern or pattern in ("re:", "token:"):
            return SearchResult(pattern, 0)
        try:
            rx = None if by_token else word_pattern(pattern)
        except re.error:
            return SearchResult(pattern, 0)
        token = pattern[6:].strip().lower()
        cache, strings, texts, starts = self._open()
        explain = np.flatnonzero(pool_of(feature, np.arange(len(texts)), self.seed, self.explain_share))
        found: list[tuple[int, int]] = []
        for c in explain:
            c = int(c)
            if by_token:
                found += [(c, t) for t, s in enumerate(strings[c]) if s.strip().lower() == token]
                continue
            for m in rx.finditer(texts[c]):
                if m.end() > m.start():
                    # the token holding the match's last character
                    found.append((c, int(np.searchsorted(starts[c], m.end() - 1, side="right")) - 1))
        found = list(dict.fromkeys(found))
        if not found:
            return SearchResult(pattern, 0)
        picked = [found[int(i)] for i in np.unique(np.linspace(0, len(found) - 1, min(limit, len(found))).round())]
        values = cache.feature_values(feature, [c for c, _ in picked])
        hits = []
        for c, t in picked:
            row, toks = values[c], strings[c]
            lo, hi = max(0, t - 4), min(len(toks), t + 3)
            snippet = "".join(f"[{s}]" if i == t else s for i, s in zip(range(lo, hi), toks[lo:hi]))
            hits.append(Hit(c, t, float(row[t]), float(row[t + 1]) if t + 1 < len(row) else 0.0,
                            " ".join(snippet.split()), toks[t + 1] if t + 1 < len(toks) else ""))
        return SearchResult(pattern, len(found), hits)

    def bind(self, feature: int) -> FeatureSearch:
        return FeatureSearch(self, feature)


@dataclass
class FeatureSearch:
    """A corpus search bound to one feature (what a record carries)."""

    corpus: CorpusSearch
    feature: int

    def __call__(self, pattern: str, limit: int = 30) -> SearchResult:
        return self.corpus.search(self.feature, pattern, limit)
