"""Baselines that explain in one LLM call (OpenAI / delphi style) from one kind of evidence or two:
- oneshot: the top windows of the explain pool, firing tokens marked with their levels;
- logitlens: the tokens the feature's decoder direction promotes / suppresses (VocabProj);
- oneshot+logitlens: both (Gur-Arieh et al. found the combination best on input and output evaluations)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from saexplain.config import Config
from saexplain.explain.base import EXPLAINERS, Explainer, Explanation, Tracer, firing_tokens, format_window
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord

SCHEMA = {"type": "object", "properties": {"explanation": {"type": "string", "minLength": 2, "maxLength": 240}},
          "required": ["explanation"]}


class OneShotConfig(Config):
    cli_prefix: ClassVar[str] = "oneshot_"
    examples: int = Field(10, ge=1, description="top windows of the explain pool shown")
    window: int = Field(24, ge=4, description="tokens shown per window (around the strongest)")
    lens_tokens: int = Field(10, ge=1, description="logit-lens tokens shown (promoted and suppressed)")
    max_tokens: int = Field(80, ge=8, description="reply length cap")


def examples_evidence(record: FeatureRecord, n: int, window: int) -> str:
    wins = [w for w in record.activating("explain") if w.kind == "top"][:n]
    lines = []
    for i, w in enumerate(wins):
        toks, acts = w.cut(window)
        lines.append(f"{i + 1}. {format_window(toks, acts, record.max_act)}")
    return "Examples where the feature fires:\n" + "\n".join(lines) + "\n" + firing_tokens(wins)


def lens_evidence(oracle, feature: int, k: int) -> str:
    lens = oracle.logit_lens(feature, k)
    return ("Output tokens the feature promotes: " + ", ".join(repr(t) for t, _ in lens.top) +
            "\nOutput tokens it suppresses: " + ", ".join(repr(t) for t, _ in lens.bottom))


class _OneShot(Explainer):
    Config = OneShotConfig
    prompts = ("oneshot",)
    use_examples: ClassVar[bool] = True
    use_lens: ClassVar[bool] = False

    async def run(self, record: FeatureRecord, llm, oracle, trace: Tracer) -> Explanation:
        parts = []
        if self.use_examples:
            parts.append(examples_evidence(record, self.cfg.examples, self.cfg.window))
        if self.use_lens:
            parts.append(lens_evidence(oracle, record.feature, self.cfg.lens_tokens))
        evidence = "\n\n".join(parts)
        messages = template(__file__, "oneshot").chat(evidence=evidence)
        trace("prompt", messages[-1][1])
        obj, comp = await llm.generate_json(messages, SCHEMA, max_tokens=self.cfg.max_tokens, feature=record.feature)
        trace("reply", comp.text)
        return Explanation(obj["explanation"].strip(), [], {"evidence": evidence})


@EXPLAINERS.register("oneshot")
class OneShot(_OneShot):
    name = "oneshot"


@EXPLAINERS.register("logitlens")
class LogitLensOnly(_OneShot):
    name = "logitlens"
    use_examples, use_lens = False, True


@EXPLAINERS.register("oneshot+logitlens")
class OneShotLens(_OneShot):
    name = "oneshot+logitlens"
    use_examples, use_lens = True, True
