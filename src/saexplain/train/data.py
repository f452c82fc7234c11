"""SAEExplainer training data: the feature split, SFT references, candidate rewards and preference pairs.

Rewards (SAEExplainer): an LLM writes `reward_texts` texts of 15–30 words from a candidate; the oracle measures
the feature on them; reward (`reward_source` 'llm') = the max activation over the texts / the feature's corpus max
(so features are comparable; the raw value is kept too), or ('share') the share of the texts on which the feature
reaches `reward_fraction` × its max — the generation score's own count. ('generation' is the generation scorer
itself: its prompt writes `reward_texts` sentences, counted as 'share' does; 'corpus' looks words up instead.)

Pair rules, per feature, on the normalised rewards of its candidates (relative differences are to the best):
- chosen = the best candidate; drop the feature when best < `min_reward`, or (best − worst) / best ≤ `min_spread`;
- rejected = the best candidate of the lower half (ranks ⌈n/2⌉+1 … n) whose reward trails the chosen by more
  than `min_margin` × best; drop the feature when there is none."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saexplain.errors import ConfigError, SaexplainError
from saexplain.llm.prompts import template
from saexplain.score.generative import Generation, GenerationConfig, sentences_schema
from saexplain.store import Store
from saexplain.train.config import TrainConfig

TEXT_CHARS = 240
# the error of a candidate with no text (nothing to reward): stays empty, never retried, not a failed reward
EMPTY = "empty candidate"


# ----------------------------------------------------------------------------------------- the split
def heldout_features(store: Store, cfg: TrainConfig) -> set[int]:
    """The features of the held-out runs: those they chose (saved with the run), and any they explained."""
    out: set[int] = set()
    for part in (p.strip() for p in cfg.heldout_runs.split(",")):
        if not part:
            continue
        try:
            run_id = int(part)
        except ValueError:
            raise ConfigError(f"--heldout-runs: run ids, comma-separated (got {part!r})") from None
        row = store.run(run_id)  # a clear error for an unknown run
        config = json.loads(row.get("config_json") or "{}")
        chosen = config.get("features")
        if chosen is None:  # a run from before runs recorded their choice: redo it from its config
            chosen = _rechoose(store, run_id, config)
        out |= set(chosen) | {e["feature"] for e in store.explanations(run_id)}
    return out


def _rechoose(store: Store, run_id: int, config: dict) -> list[int]:
    from saexplain.cache.pipeline import cache_key
    from saexplain.pipeline.runner import StageConfigs, choose_features

    cfgs = StageConfigs.from_dict(config)
    key, _ = cache_key(cfgs.subject, cfgs.corpus, cfgs.cache)
    caches = [r for r in store.runs("cache") if r["config_hash"] == key]
    if not caches:
        raise SaexplainError(f"run {run_id}: its cache is not in {store.path}, so its features cannot be known")
    return choose_features(cfgs.run.features, store.feature_stats(caches[0]["id"]), cfgs.run)


def choose_train_features(cfg: TrainConfig, stats: list[dict], heldout: set[int]) -> list[int]:
    """Training features: given ids (none may be held out) or random:N from the density band minus held-out."""
    spec = cfg.features.strip()
    if not spec.startswith("random:"):
        try:
            ids = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--features {spec!r}: ids like 3,17 or random:N") from None
        known = {r["feature"] for r in stats}
        if bad := [i for i in ids if i not in known]:
            raise ConfigError(f"--features: unknown feature id {bad[0]}")
        if leak := sorted(set(ids) & heldout):
            raise ConfigError(f"--features: {leak[:5]} are held out for evaluation (a training feature must not be)")
        return ids
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"--features {spec!r}: N must be an integer") from None
    band = _band(cfg, stats, heldout)
    rng = np.random.default_rng(cfg.feature_seed)
    return sorted(int(band[i]) for i in rng.permutation(len(band))[:n])


def _band(cfg: TrainConfig, stats: list[dict], heldout: set[int]) -> list[int]:
    return sorted(r["feature"] for r in stats if not r["dead"] and cfg.min_density <= r["frequency"] <= cfg.max_density
                  and r["feature"] not in heldout)


def unseen_features(cfg: TrainConfig, stats: list[dict], heldout: set[int], train: Sequence[int]) -> list[int]:
    """The density band's features that are neither training nor held-out features (sorted): new to the SFT
    model, as the evaluation's are — the pool of `dpo_features` 'unseen'."""
    train = set(train)
    return [int(f) for f in _band(cfg, stats, heldout) if f not in train]


def round_pool(split: Mapping[str, Any], cfg: TrainConfig) -> list[int]:
    """The features the DPO rounds draw their pair and check features from, given a folder's split.json: its
    training features, or (`dpo_features` 'unseen') the band's features outside the split."""
    if cfg.dpo_features == "sft":
        return list(split["train"])
    if "unseen" not in split:
        raise ConfigError("--dpo-features unseen: the training folder's split.json lists no unseen features")
    if not cfg.pair_features:
        raise ConfigError("--dpo-features unseen needs --pair-features (how many of the unseen features get pairs)")
    return list(split["unseen"])


# ------------------------------------------------------------------------------------ SFT references
def references_from_store(store: Store, run_id: int, features: Sequence[int], scorer: str) -> dict[int, str]:
    """Per feature, its best explanation in the run by `scorer` (explanations without that score come after)."""
    scores = {(s["explanation_id"]): s["value"] for s in store.scores(run_id)
              if s["scorer"] == scorer and s["error"] is None and s["value"] is not None}
    out = {}
    for f in features:
        exps = store.explanations(run_id, feature=f, ok_only=True)
        if exps:
            best = max(exps, key=lambda e: (scores.get(e["id"], -1.0), -e["id"]))
            out[f] = best["description"]
    return out


def references_from_top_tokens(records: dict, n: int = 4) -> dict[int, str]:
    """Cheap references for a warm-up on thousands of features (no LLM): the tokens each feature fires on most at
    the peaks of its explain pool's top windows, counted — 'the tokens "red", "white", "blue"'. They teach the map
    from a decoder vector to the words it stands for; descriptions (the store's or Neuronpedia's references) come
    after. A feature without an activating window has none."""
    from collections import Counter

    out = {}
    for f, record in records.items():
        counts: Counter[str] = Counter()
        for w in record.activating("explain"):
            tok = w.tokens[w.peak].strip()
            if tok:
                counts[tok] += 1
        words = [t for t, _ in counts.most_common(n)]
        if words:
            out[f] = ("the token " if len(words) == 1 else "the tokens ") + ", ".join(f'"{t}"' for t in words)
    return out


def references_from_neuronpedia(path: str | Path, features: Sequence[int]) -> dict[int, str]:
    """A Neuronpedia explanation export: a JSON list (or {"explanations": [...]}) of objects with the feature in
    `index` (or `feature`) and the text in `description` (or `explanation`). The first per feature is kept."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"reference file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    rows = data.get("explanations") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: expected a list of explanations")
    wanted, out = set(features), {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ConfigError(f"{path}: entry {i} is not an object")
        f = r.get("index", r.get("feature"))
        text = r.get("description", r.get("explanation"))
        if f is None or not isinstance(text, str):
            raise ConfigError(f"{path}: entry {i} has no index/feature or no description/explanation")
        try:
            f = int(f)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: entry {i}: feature {f!r} is not an integer") from None
        if f in wanted and f not in out and text.strip():
            out[f] = text.strip()
    return out


# --------------------------------------------------------------------------------------- rewards
@dataclass
class Candidate:
    text: str
    reward: float | None = None  # the reward of its texts (`set_reward`; the mean over repeats)
    raw: float | None = None  # the max activation itself (the mean over repeats)
    texts: list[str] = field(default_factory=list)
    error: str | None = None
    rewards: list[float] = field(default_factory=list)  # per repeat (one set of texts each)


def set_reward(acts: Sequence[float], max_act: float, measure: str, fraction: float) -> float:
    """The reward of one set of texts from the feature's max activation on each text: 'max' (`reward_source`
    'llm') the highest of them relative to the feature's max; 'share' the share of the texts on which the feature
    reaches `fraction` × its max (generation's own count on its texts)."""
    if max_act <= 0 or not acts:
        return 0.0
    if measure == "share":
        return float(np.mean([a >= fraction * max_act for a in acts]))
    return max(acts) / max_act


def measured(candidate: str, sets: Sequence[Sequence[str]], acts: Sequence[Sequence[float]], max_act: float,
             measure: str, fraction: float) -> Candidate:
    """A candidate rewarded on its sets of texts, given the feature's max activation on each text."""
    rel = [set_reward(a, max_act, measure, fraction) for a in acts]
    return Candidate(candidate, float(np.mean(rel)), float(np.mean([max(a) for a in acts])),
                     [x for s in sets for x in s], rewards=rel)


async def reward(candidate: str, feature: int, max_act: float, llm, oracle, n_texts: int, repeats: int = 1,
                 measure: str = "max", fraction: float = 0.5) -> Candidate:
    """Texts written from the candidate (greedy; with `repeats` > 1, that many sets sampled at T 0.7 with seeds
    0, 1, …), the feature measured on them: per set, `set_reward` ('max': the max activation relative to the
    feature's max; 'share': the share of texts reaching `fraction` × the max)."""
    messages = template(__file__, "reward").chat(explanation=candidate, n=n_texts)
    sets, acts = [], []
    for i in range(repeats):
        obj, _ = await llm.generate_json(messages, sentences_schema(n_texts, "texts", max_chars=TEXT_CHARS),
                                         max_tokens=(TEXT_CHARS // 3) * n_texts + 20,
                                         temperature=0.0 if repeats == 1 else 0.7,
                                         seed=None if repeats == 1 else i, feature=feature)
        sets.append(obj["texts"])
        acts.append([r.max(feature) for r in await oracle.aactivations(obj["texts"], [feature])])
    return measured(candidate, sets, acts, max_act, measure, fraction)


async def generation_reward(candidate: str, record, llm, oracle, n_texts: int, repeats: int = 1,
                            fraction: float = 0.5) -> Candidate:
    """The generation scorer's own score of a candidate (`reward_source` 'generation'): the scorer's prompt and
    writer ask the LLM for `n_texts` sentences (greedy, as the evaluation writes them; with `repeats` > 1, that
    many sets sampled at T 0.7 with seeds 0, 1, …), the oracle measures the feature on them, and a set's reward is
    the share of sentences reaching `fraction` × the feature's max — with the evaluation's `sentences` and
    `fraction` (the scorer's defaults: 10 and 0.5), the evaluation's generation score of that explanation (the
    same request, so the LLM cache shares it)."""
    sets, acts = [], []
    for i in range(repeats):
        cfg = GenerationConfig(sentences=n_texts, fraction=fraction, reference="max",
                               temperature=0.0 if repeats == 1 else 0.7, seed=None if repeats == 1 else i)
        res = await Generation(cfg).run(record, candidate, llm, oracle)
        sets.append([s["text"] for s in res.details["sentences"]])
        acts.append([s["max_act"] for s in res.details["sentences"]])
    return measured(candidate, sets, acts, record.max_act, "share", fraction)


def max_by_text(oracle, texts: Sequence[str], feature: int) -> dict[str, float]:
    """The feature's max activation on each distinct text, in one oracle call (none for no text)."""
    texts = sorted(set(texts))
    return dict(zip(texts, (r.max(feature) for r in oracle.activations(texts, [feature])))) if texts else {}


def remeasure(c: Candidate, acts: Mapping[str, float], max_act: float, n_texts: int, repeats: int, measure: str,
              fraction: float) -> Candidate:
    """A rewarded candidate's stored texts (`repeats` sets of `n_texts`, as `reward` wrote them) measured again
    under another measure, given the feature's max activation on each text (`acts`: `max_by_text`) — what
    `reward` would return with the same texts, no LLM call. A candidate without a reward is returned as it is (an
    empty one stays empty, a failed one is retried); stored texts that are not `repeats` × `n_texts` are an error
    row, so the next run rewards it afresh."""
    if c.reward is None:
        return c
    if len(c.texts) != n_texts * repeats:
        return Candidate(c.text, error=f"stored reward texts: {len(c.texts)}, not {repeats} × {n_texts}")
    sets = [c.texts[i * n_texts:(i + 1) * n_texts] for i in range(repeats)]
    return measured(c.text, sets, [[acts[x] for x in s] for s in sets], max_act, measure, fraction)


QUOTED = re.compile(r'"([^"]+)"')
# the framing words of a candidate without quotes ("the tokens ... and ..."): not looked up
FRAMING = {"the", "token", "tokens", "word", "words", "and", "or", "of", "in", "as", "such", "like", "e.g"}
MAX_WORDS = 8


def candidate_words(candidate: str) -> list[str]:
    """The words a candidate names: its quoted items (stripped, case-insensitively distinct, at most
    `MAX_WORDS`), or without quotes its words of two or more characters but for the framing words."""
    items = [q.strip() for q in QUOTED.findall(candidate)]
    if not any(items):
        items = [w for w in re.findall(r"[\w'-]{2,}", candidate) if w.lower() not in FRAMING]
    return list({w.lower(): w for w in items if w}.values())[:MAX_WORDS]


def corpus_reward(candidate: str, record, fraction: float, limit: int = 60) -> Candidate:
    """The corpus reward of a candidate (`reward_source` 'corpus'): for each word it names, the share of its
    occurrences in the feature's explain-pool contexts (up to `limit` read, spread over all) where the feature
    reaches `fraction` × its max on that token; the reward is the mean over the words (a word that never occurs
    counts 0). No LLM call: the latent cache answers. `texts` records each word's count, `raw` the highest
    activation read. A candidate naming no word is an error (recorded, not rewarded)."""
    words = candidate_words(candidate)
    if not words:
        raise SaexplainError("names no word to look up")
    if record.search is None:
        raise SaexplainError(f"feature {record.feature}: the record has no corpus search")
    threshold = fraction * record.max_act
    shares, lines, top = [], [], 0.0
    for w in words:
        res = record.search(w, limit)
        share = res.share(threshold, "at") if record.max_act > 0 else 0.0
        shares.append(share)
        top = max([top, *(h.at for h in res.hits)])
        lines.append(f"{w!r}: fires on {round(share * len(res.hits))} of {len(res.hits)} occurrences read "
                     f"({res.matches} in the explain pool)")
    r = float(np.mean(shares))
    return Candidate(candidate, r, top, lines, rewards=[r])


def reward_noise(candidates: Sequence[Candidate]) -> float | None:
    """The reward's noise: the pooled standard deviation between repeats of one candidate (over every candidate
    rewarded at least twice), None when none was."""
    var = [np.var(c.rewards, ddof=1) for c in candidates if len(c.rewards) >= 2]
    return float(np.sqrt(np.mean(var))) if var else None


# ----------------------------------------------------------------------------------------- pairs
def pair_features(features: Sequence[int], cfg: TrainConfig) -> list[int]:
    """The features of `round_pool` that get candidates and pairs: all, or `pair_features` of them (one seeded
    permutation, so a larger draw extends a smaller one)."""
    n = cfg.pair_features
    if not n or n >= len(features):
        return list(features)
    return sorted(int(f) for f in feature_order(features, cfg)[:n])


def check_features(features: Sequence[int], cfg: TrainConfig) -> list[int]:
    """The features of DPO's reward check (`dpo_check` 'reward'): the `dpo_check_features` that follow the pair
    features in the same seeded permutation of `round_pool` — features no round trains on (training features SFT
    saw, or with `dpo_features` 'unseen' features new to the explainer)."""
    n = cfg.pair_features
    if not n or n >= len(features):
        raise ConfigError("--dpo-check reward needs features outside the pair features: set "
                          f"--pair-features below the pool's {len(features)} features")
    return sorted(int(f) for f in feature_order(features, cfg)[n:n + cfg.dpo_check_features])


def feature_order(features: Sequence[int], cfg: TrainConfig) -> list[int]:
    """The seeded permutation of a round's pool that the pair and check features are drawn from, in order."""
    return [int(f) for f in np.random.default_rng(cfg.feature_seed).permutation(list(features))]


@dataclass
class Pair:
    feature: int
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float


def _distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The first candidate of each text, in order (a text repeated by sampling is rewarded once)."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.text, c)
    return list(seen.values())


def with_greedy(line: Mapping[str, Any]) -> list[dict]:
    """A candidates.jsonl line's candidates, and its greedy one (`greedy_rounds`) when that is another text."""
    rows = list(line["candidates"])
    g = line.get("greedy")
    if g and g["text"] not in {c["text"] for c in rows}:
        rows.append(g)
    return rows


def failed(c: Mapping[str, Any]) -> bool:
    """A stored candidate whose reward failed (retried by the next run); an empty candidate has none to ask."""
    return c["reward"] is None and c["error"] != EMPTY


def rewards_summary(lines: Sequence[Mapping[str, Any]], pairs: Sequence[Pair], greedy: bool) -> dict[str, Any]:
    """A round's rewards over its pair features' candidates.jsonl lines (`pairs.json` "rewards"): the sampled
    candidates' (count, non-zero, mean, each feature's best), and `failed` / `empty` over every text the round
    rewarded — sampled candidates and, with `greedy`, greedy texts that are no sampled one — so a failed greedy
    reward is counted too; with `greedy`, how the greedy texts fared (`failed` among them) and which pairs they
    took."""
    rewards = [c["reward"] for x in lines for c in x["candidates"] if c["reward"] is not None]
    best = [max(r) for x in lines  # features with no reward at all (failed, empty) are left out
            if (r := [c["reward"] for c in x["candidates"] if c["reward"] is not None])]
    texts = [c for x in lines for c in (with_greedy(x) if greedy else x["candidates"])]
    out: dict[str, Any] = {
        "candidates": len(rewards), "nonzero": sum(r > 0 for r in rewards),
        "mean_reward": float(np.mean(rewards)) if rewards else None, "features_rewarded": len(best),
        "best_median": float(np.median(best)) if best else None, "best_mean": float(np.mean(best)) if best else None,
        "failed": sum(map(failed, texts)),
        "empty": sum(c["error"] == EMPTY for c in texts)}
    if greedy:
        g_rows = {x["feature"]: x["greedy"] for x in lines if x.get("greedy")}
        g_rew = [c["reward"] for c in g_rows.values() if c["reward"] is not None]
        g_texts = {(f, c["text"]) for f, c in g_rows.items()}
        out["greedy"] = {
            "features": len(g_rows), "rewarded": len(g_rew), "mean_reward": float(np.mean(g_rew)) if g_rew else None,
            "failed": sum(map(failed, g_rows.values())),
            "chosen": sum((p.feature, p.chosen) in g_texts for p in pairs),
            "rejected": sum((p.feature, p.rejected) in g_texts for p in pairs),
            "sampled_too": sum(len(with_greedy(x)) == len(x["candidates"]) for x in lines if x.get("greedy"))}
    return out


def build_pairs(feature: int, candidates: Sequence[Candidate], cfg: TrainConfig, noise: float | None = None,
                greedy: Candidate | None = None) -> tuple[list[Pair], str]:
    """The pairs of one feature (up to `pairs_per_feature`), or none with the reason it was dropped. Chosen texts
    come from the upper half (distinct, best first, each at least `min_reward`), rejected ones from the lower half
    (distinct, each used once, the closest one beyond the margin first), so the first pair is the best candidate
    against the closest lower-half one that trails it clearly. With the round's measured reward `noise` (a
    standard deviation of one set's reward), a rejected candidate must trail its chosen one by more than
    `min_gap_sigmas` standard errors of the difference of two means of `reward_repeats` sets, instead of the
    relative `min_margin`. With the policy's `greedy` explanation (rewarded; `greedy_rounds`) among the
    candidates, it takes the first pair where it can: chosen when it is in the upper half, rejected against the
    best candidate that beats it when in the lower half; the other pairs follow the rules above."""
    if greedy is not None and greedy.reward is not None and greedy.text not in {c.text for c in candidates}:
        candidates = [*candidates, greedy]
    scored = sorted((c for c in candidates if c.reward is not None), key=lambda c: -c.reward)
    if len(scored) < 2:
        return [], f"{len(scored)} scored candidates"
    best, worst = scored[0].reward, scored[-1].reward
    if best < cfg.min_reward:
        return [], f"best reward {best:.3f} < {cfg.min_reward}"
    if (best - worst) / best <= cfg.min_spread:
        return [], f"spread {(best - worst) / best:.3f} ≤ {cfg.min_spread}"
    half = (len(scored) + 1) // 2
    upper = [c for c in _distinct(scored[:half]) if c.reward >= cfg.min_reward]
    lower = _distinct(scored[half:])
    if noise is not None:
        gap = cfg.min_gap_sigmas * noise * float(np.sqrt(2 / cfg.reward_repeats))

        def beats(c: Candidate, r: Candidate) -> bool:
            return c.reward - r.reward > gap
        why = f"no lower-half candidate trails the best by > {gap:.3f} ({cfg.min_gap_sigmas:g} σ of the noise)"
    else:
        def beats(c: Candidate, r: Candidate) -> bool:
            return (c.reward - r.reward) / c.reward > cfg.min_margin
        why = f"no lower-half candidate trails the best by > {cfg.min_margin:.0%}"
    pairs: list[Pair] = []
    used: set[str] = set()  # a text is in one pair at most, as chosen or as rejected
    g = greedy.text if greedy is not None and greedy.reward is not None else None
    if g is not None and any(c.text == g for c in upper):
        c = next(c for c in upper if c.text == g)
        r = next((r for r in lower if r.text != g and beats(c, r)), None)
    elif g is not None and any(r.text == g for r in lower):
        r = next(r for r in lower if r.text == g)
        c = next((c for c in upper if c.text != g and beats(c, r)), None)
    else:
        c = r = None
    if c is not None and r is not None:
        used |= {c.text, r.text}
        pairs.append(Pair(feature, c.text, r.text, c.reward, r.reward))
        if len(pairs) >= cfg.pairs_per_feature:
            return pairs, "ok"
    for c in upper:
        if c.text in used:
            continue
        r = next((r for r in lower if r.text not in used and r.text != c.text and beats(c, r)), None)
        if r is None:  # a chosen text further down, with a lower reward, cannot beat any of those left either
            break
        used |= {c.text, r.text}
        pairs.append(Pair(feature, c.text, r.text, c.reward, r.reward))
        if len(pairs) >= cfg.pairs_per_feature:
            break
    return pairs, ("ok" if pairs else why)


def save_pairs(pairs: Sequence[Pair], prompts: dict[int, str], path: Path) -> Path:
    """The pairs as a HF dataset (prompt, chosen, rejected, feature, rewards), saved to disk."""
    from datasets import Dataset

    if not pairs:
        raise SaexplainError("no preference pair survived the rules: nothing to train on (see drop reasons)")
    rows = [{"prompt": prompts[p.feature], "chosen": " " + p.chosen, "rejected": " " + p.rejected,
             **{k: v for k, v in asdict(p).items() if k not in ("chosen", "rejected")}} for p in pairs]
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def load_jsonl(path: Path) -> dict[int, dict[str, Any]]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["feature"]] = row
    return out
