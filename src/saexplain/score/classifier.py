"""Classification scorers (after delphi's detection and fuzzing): the LLM reads the explanation and judges
windows of the score pool; the feature's real activations are the truth.

- detection: activating windows (spread over the activation range) and non-activating ones (random and hard
  negatives), shuffled; does each match the explanation? Balanced accuracy, recall per decile, and AUROC
  from P("yes") when the backend gives logprobs. One window per question (default; small LLMs need it) or
  several per prompt (a JSON list of the matching numbers).
- fuzzing: activating windows whose marked tokens are either the ones where the feature fires or as many
  random other tokens; are the marked tokens what the explanation describes?"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.llm import LLMParseError
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord, Window
from saexplain.score.base import (
    SCORERS,
    Scorer,
    ScoreResult,
    auroc,
    balanced_accuracy,
    p_yes_with_source,
    snippet,
)
from saexplain.status import Status


def spread(windows: list[Window], n: int) -> list[Window]:
    """`n` windows evenly spaced over the activation-sorted list (strongest to weakest)."""
    if len(windows) <= n:
        return list(windows)
    idx = np.unique(np.linspace(0, len(windows) - 1, n).round().astype(int))
    return [windows[i] for i in idx]


def _decile(w: Window) -> str:
    return "top" if w.kind == "top" else str(w.decile)


class DetectionConfig(Config):
    cli_prefix: ClassVar[str] = "detection_"
    activating: int = Field(10, ge=1, description="activating windows judged (spread over the range)")
    random_negatives: int = Field(5, ge=0, description="random non-activating windows judged")
    hard_negatives: int = Field(5, ge=0, description="hard negatives judged (the feature's top tokens, no firing)")
    per_prompt: int = Field(1, ge=1, description="windows per question (1: P(yes) per window; >1: a JSON list)")
    logprobs: bool = Field(True, description="read P(yes) from logprobs (AUROC); off for servers without them")
    metric: Literal["auroc", "balanced_accuracy"] = Field(
        "auroc", description="the value: AUROC of P(yes) (threshold-free; small LLMs are badly calibrated) or "
                             "balanced accuracy at P(yes) > 0.5; AUROC falls back to balanced accuracy without logprobs")
    seed: int = Field(0, description="shuffle seed")


class ClassifierScorer(Scorer):
    """Template method: `windows()` chooses (window, truth, text) triples, the LLM judges them."""

    prompt: ClassVar[str]

    def items(self, record: FeatureRecord, rng: np.random.Generator) -> list[tuple[Window, bool, str]]:
        raise NotImplementedError

    async def judge_one(self, llm, explanation: str, text: str, feature: int) -> tuple[float, str]:
        """(P(yes), "logprobs" or "text": where it came from)."""
        comp = await llm.ask(template(__file__, self.prompt), explanation=explanation, snippet=snippet(text),
                             max_tokens=1 if self.cfg.logprobs else 3, temperature=0.0,
                             logprobs=5 if self.cfg.logprobs else None, feature=feature)
        try:
            return p_yes_with_source(comp)
        except LLMParseError:
            llm._forget(comp)  # not cached: the next run asks again
            raise

    async def judge_many(self, llm, explanation: str, texts: list[str], feature: int) -> list[tuple[float, str]]:
        numbered = "\n".join(f"{i + 1}. \"{snippet(t)}\"" for i, t in enumerate(texts))
        schema = {"type": "object", "properties": {"matches": {"type": "array", "items": {
            "type": "integer", "minimum": 1, "maximum": len(texts)}}}, "required": ["matches"]}
        tpl = template(__file__, "detection_many")
        obj, _ = await llm.generate_json(tpl.chat(explanation=explanation, snippets=numbered), schema,
                                         max_tokens=16 + 4 * len(texts), feature=feature)
        chosen = set(obj["matches"])
        return [(1.0 if i + 1 in chosen else 0.0, "list") for i in range(len(texts))]

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        rng = np.random.default_rng([self.cfg.seed, record.feature])
        items = self.items(record, rng)
        if not any(t for _, t, _ in items) or all(t for _, t, _ in items):
            return ScoreResult(None, {"error": "the score pool lacks activating or non-activating windows"})
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        texts = [t for _, _, t in items]
        per = getattr(self.cfg, "per_prompt", 1)
        if per == 1:
            judged = await asyncio.gather(*(self.judge_one(llm, explanation, t, record.feature) for t in texts))
        else:
            chunks = await asyncio.gather(*(self.judge_many(llm, explanation, texts[i:i + per], record.feature)
                                            for i in range(0, len(texts), per)))
            judged = [p for c in chunks for p in c]
        probs = [p for p, _ in judged]
        sources = [src for _, src in judged]
        truth = [t for _, t, _ in items]
        predicted = [p > 0.5 for p in probs]
        rows = [{"kind": w.kind, "decile": _decile(w), "max_act": w.max_act, "truth": t, "p_yes": p, "from": src,
                 "text": text} for (w, t, text), p, src in zip(items, probs, sources)]
        recall: dict[str, list[bool]] = {}
        for r, pred in zip(rows, predicted):
            if r["truth"]:
                recall.setdefault(r["decile"], []).append(pred)
        details = {"balanced_accuracy": balanced_accuracy(predicted, truth),
                   "auroc": auroc(probs, truth),
                   # what the AUROC was computed from, as it happened: logprobs only when every window's
                   # P(yes) came from logprobs; "mixed" when some fell back to the written answer
                   "auroc_from": ("logprobs" if all(s == "logprobs" for s in sources) else
                                  "mixed" if "logprobs" in sources else "answers"),
                   "windows_from_logprobs": sum(s == "logprobs" for s in sources),
                   "recall_by_decile": {k: float(np.mean(v)) for k, v in sorted(recall.items())},
                   "windows": rows}
        use_auroc = self.cfg.metric == "auroc" and details["auroc_from"] == "logprobs" and details["auroc"] is not None
        details["metric"] = "auroc" if use_auroc else "balanced_accuracy"
        result = ScoreResult(details[details["metric"]], details)
        if self.cfg.metric == "auroc" and self.cfg.logprobs and per == 1 and not use_auroc:
            result.status = Status.DEGRADED
            result.reason = (f"AUROC asked for, but only {details['windows_from_logprobs']} of {len(sources)} "
                             f"windows had yes/no in the top logprobs: the value is balanced accuracy")
        return result


@SCORERS.register("detection")
class Detection(ClassifierScorer):
    name = "detection"
    Config = DetectionConfig
    prompt = "detection"

    def items(self, record, rng):
        pos = spread(record.activating("score"), self.cfg.activating)
        neg = record.pool("score", ("random",))[: self.cfg.random_negatives] + \
            record.pool("score", ("hard_negative",))[: self.cfg.hard_negatives]
        return [(w, True, w.text) for w in pos] + [(w, False, w.text) for w in neg]


class FuzzingConfig(Config):
    cli_prefix: ClassVar[str] = "fuzzing_"
    activating: int = Field(10, ge=2, description="activating windows (half marked correctly, half at random)")
    logprobs: bool = Field(True, description="read P(yes) from logprobs (AUROC)")
    metric: Literal["auroc", "balanced_accuracy"] = Field("auroc", description="the value (as for detection)")
    seed: int = Field(0, description="which windows get the wrong marks")


@SCORERS.register("fuzzing")
class Fuzzing(ClassifierScorer):
    name = "fuzzing"
    Config = FuzzingConfig
    prompt = "fuzzing"

    def items(self, record, rng):
        wins = spread(record.activating("score"), self.cfg.activating)
        wrong = set(rng.permutation(len(wins))[: len(wins) // 2].tolist())
        out = []
        for i, w in enumerate(wins):
            fires = np.flatnonzero(w.acts > 0)
            if i in wrong:
                quiet = np.flatnonzero((w.acts == 0) & np.array([bool(t.strip()) for t in w.tokens]))
                if len(quiet) == 0:
                    continue
                out.append((w, False, w.marked(rng.choice(quiet, min(len(fires), len(quiet)), replace=False))))
            else:
                out.append((w, True, w.marked(fires)))
        return out
