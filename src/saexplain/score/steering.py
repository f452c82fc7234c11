"""Steering (Gur-Arieh et al.'s output evaluation): does the explanation say what the feature *does* to the
model's output? The feature's unit decoder direction is added at the hookpoint with strengths calibrated by
bisection to a KL divergence of ±0.25 and ±0.5 nats from the clean next-token distribution (over the
prompts); the model continues each prompt greedily at each strength. Two random features get the same
treatment; the LLM judge sees the three sets (shuffled) and picks the one that fits the explanation.
Value 1 when it picks this feature's set (chance: 1/3)."""

from __future__ import annotations

import string
import weakref
from typing import ClassVar

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord
from saexplain.score.base import SCORERS, Scorer, ScoreResult


class SteeringConfig(Config):
    cli_prefix: ClassVar[str] = "steering_"
    prompts: list[str] = Field(default_factory=lambda: ["The", "I think that", "Here is a short story:"],
                               description="prompts the steered model continues")
    kls: list[float] = Field(default_factory=lambda: [0.25, 0.5], description="target KL values (each ±)")
    new_tokens: int = Field(12, ge=1, description="tokens per continuation")
    distractors: int = Field(2, ge=1, description="random features whose sets are shown beside this one")
    seed: int = Field(0, description="distractor choice and set order")


_STEERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # oracle → {(feature, cfg hash): set}


def steered_set(oracle, feature: int, cfg: SteeringConfig) -> tuple[list[str], list[dict]]:
    """The steered continuations, with the model held alone (the hook changes every forward while it is on).
    They depend on the feature and the config only (greedy), so they are computed once per oracle: every
    explanation of a feature, and every feature drawn as a distractor, reuse them."""
    memo = _STEERED.setdefault(oracle, {})
    key = (feature, cfg.hash())
    if key not in memo:
        with oracle.exclusive():
            memo[key] = _steered_set(oracle, feature, cfg)
    texts, levels = memo[key]
    return list(texts), [dict(x) for x in levels]


def _steered_set(oracle, feature: int, cfg: SteeringConfig) -> tuple[list[str], list[dict]]:
    from saexplain.subject.steering import calibrate, continuations

    direction = oracle.decoder_direction(feature).float()
    direction = direction / direction.norm()
    texts, levels = [], []
    for kl in cfg.kls:
        for sign in (1.0, -1.0):
            strength, reached = calibrate(oracle.subject, cfg.prompts, direction, kl, sign)
            outs = continuations(oracle.subject, cfg.prompts, direction, strength, cfg.new_tokens)
            texts += [p + o for p, o in zip(cfg.prompts, outs)]
            levels.append({"target_kl": sign * kl, "strength": strength, "kl": reached})
    return texts, levels


@SCORERS.register("steering")
class Steering(Scorer):
    name = "steering"
    Config = SteeringConfig

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        rng = np.random.default_rng([self.cfg.seed, record.feature])
        others = [int(f) for f in rng.permutation(oracle.d_sae) if f != record.feature][: self.cfg.distractors]
        features = [record.feature] + others
        sets = {f: steered_set(oracle, f, self.cfg) for f in features}
        order = [features[i] for i in rng.permutation(len(features))]
        letters = string.ascii_uppercase[: len(order)]
        shown = "\n\n".join(f"Set {L}:\n" + "\n".join(f"- {' '.join(t.split())}" for t in sets[f][0])
                            for L, f in zip(letters, order))
        schema = {"type": "object", "required": ["answer"],
                  "properties": {"answer": {"type": "string", "enum": list(letters)}}}
        obj, _ = await llm.generate_json(template(__file__, "steering").chat(explanation=explanation, sets=shown),
                                         schema, max_tokens=16, feature=record.feature)
        truth = letters[order.index(record.feature)]
        return ScoreResult(float(obj["answer"] == truth), {
            "answer": obj["answer"], "truth": truth, "chance": 1 / len(order),
            "sets": {L: {"feature": f, "texts": sets[f][0], "levels": sets[f][1]} for L, f in zip(letters, order)}})
