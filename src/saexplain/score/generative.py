"""Scorers that close the loop through the real subject model: the LLM writes text from the explanation and
the oracle measures the feature on it.

- generation (SAGE's *generative accuracy*, SAEExplainer's GEN): N sentences that should activate the feature;
  one succeeds when its max activation reaches `fraction` × the feature's reference level.
- contrast (Gur-Arieh et al.'s input evaluation): 5 matching and 5 unrelated sentences; success when the
  matching ones' mean activation exceeds the unrelated ones'."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord
from saexplain.score.base import SCORERS, Scorer, ScoreResult

SENTENCE_CHARS = 200
# a reply cut off by max_tokens is invalid JSON: leave room for every sentence at its longest (~4 chars/token)
TOKENS_PER_SENTENCE = SENTENCE_CHARS // 3


def sentences_schema(n: int, *keys: str, max_chars: int = SENTENCE_CHARS) -> dict:
    """A JSON object whose `keys` each hold exactly n strings (also used by SAEExplainer's reward writer)."""
    arr = {"type": "array", "items": {"type": "string", "minLength": 3, "maxLength": max_chars},
           "minItems": n, "maxItems": n}
    return {"type": "object", "properties": {k: arr for k in keys}, "required": list(keys)}


class GenerationConfig(Config):
    cli_prefix: ClassVar[str] = "generation_"
    sentences: int = Field(10, ge=1, description="sentences the LLM writes")
    fraction: float = Field(0.5, gt=0, le=1, description="success: max activation ≥ fraction × reference")
    reference: Literal["max", "top10_mean"] = Field("max", description="the feature's reference level")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the writer")
    seed: int | None = Field(None, description="sampling seed of the writer (with temperature > 0)")


@SCORERS.register("generation")
class Generation(Scorer):
    name = "generation"
    Config = GenerationConfig

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        n = self.cfg.sentences
        messages = template(__file__, "generation").chat(explanation=explanation, n=n)
        obj, _ = await llm.generate_json(messages, sentences_schema(n, "sentences"),
                                         max_tokens=TOKENS_PER_SENTENCE * n + 20,
                                         temperature=self.cfg.temperature, seed=self.cfg.seed,
                                         feature=record.feature)
        sentences = obj["sentences"]
        acts = [r.max(record.feature) for r in await oracle.aactivations(sentences, [record.feature])]
        ref = record.reference(self.cfg.reference)
        hits = [a >= self.cfg.fraction * ref for a in acts]
        return ScoreResult(float(np.mean(hits)), {
            "reference": ref, "threshold": self.cfg.fraction * ref,
            "sentences": [{"text": s, "max_act": a, "relative": a / ref if ref else 0.0, "success": h}
                          for s, a, h in zip(sentences, acts, hits)]})


class ContrastConfig(Config):
    cli_prefix: ClassVar[str] = "contrast_"
    sentences: int = Field(5, ge=1, description="sentences per side (matching, unrelated)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the writer")
    seed: int | None = Field(None, description="sampling seed of the writer (with temperature > 0)")


@SCORERS.register("contrast")
class Contrast(Scorer):
    name = "contrast"
    Config = ContrastConfig

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        n = self.cfg.sentences
        messages = template(__file__, "contrast").chat(explanation=explanation, n=n)
        obj, _ = await llm.generate_json(messages, sentences_schema(n, "matching", "unrelated"),
                                         max_tokens=2 * TOKENS_PER_SENTENCE * n + 30,
                                         temperature=self.cfg.temperature, seed=self.cfg.seed,
                                         feature=record.feature)
        res = await oracle.aactivations(obj["matching"] + obj["unrelated"], [record.feature])
        acts = [r.max(record.feature) for r in res]
        pos, neg = float(np.mean(acts[:n])), float(np.mean(acts[n:]))
        return ScoreResult(float(pos > neg), {
            "matching_mean": pos, "unrelated_mean": neg,
            "matching": [{"text": t, "max_act": a} for t, a in zip(obj["matching"], acts[:n])],
            "unrelated": [{"text": t, "max_act": a} for t, a in zip(obj["unrelated"], acts[n:])]})
