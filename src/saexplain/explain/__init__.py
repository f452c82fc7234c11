"""Explainers: one-shot baselines (max-act examples, logit lens, both), the SAGE agent, and SAEExplainer's
decoder-injected explainer model."""

from saexplain.explain import oneshot, saeexplainer, sage  # noqa: F401  (register the explainers)
from saexplain.explain.base import EXPLAINERS, Explainer, Explanation

__all__ = ["EXPLAINERS", "Explainer", "Explanation"]
