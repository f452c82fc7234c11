"""Explainers: one-shot baselines (max-act examples, logit lens, both) and the SAGE agent."""

from saexplain.explain import oneshot, sage  # noqa: F401  (register the explainers)
from saexplain.explain.base import EXPLAINERS, Explainer, Explanation

__all__ = ["EXPLAINERS", "Explainer", "Explanation"]
