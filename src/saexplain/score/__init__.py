"""Scorers: what an explanation predicts about the real feature, judged on the score pool only."""

from saexplain.score import classifier, embedding, generative, simulation, steering  # noqa: F401  (register the scorers)
from saexplain.score.base import SCORERS, Scorer, ScoreResult, auroc, balanced_accuracy, pearson

__all__ = ["SCORERS", "ScoreResult", "Scorer", "auroc", "balanced_accuracy", "pearson"]
