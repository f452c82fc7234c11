"""Simulation (OpenAI neuron-explainer; SAGE's *predictive accuracy*): from the explanation alone the LLM
predicts every token's activation on held-out snippets (0–10); the prediction at a token is the expected
value over the probabilities of the numbers at that position when logprobs are available. Scored by
Pearson r with the real activations, pooled over all tokens (the value) and averaged per snippet.

Tokenizers that split "10" into "1" "0" (Qwen does) see only digits at the number's first token: there the
mass of "1" counts as 1 + 9·P("0" | "1") when the reply went through "1" (we have the next token's
distribution only along the sampled path), else as 1."""

from __future__ import annotations

import asyncio
import json
import math
from typing import ClassVar

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord, Window
from saexplain.score.base import SCORERS, Scorer, ScoreResult, pearson

NUMBERS = {str(i): i for i in range(11)}


class SimulationConfig(Config):
    cli_prefix: ClassVar[str] = "simulation_"
    high: int = Field(4, ge=0, description="snippets among the strongest windows")
    medium: int = Field(3, ge=0, description="snippets from the middle deciles (3–6)")
    low: int = Field(3, ge=0, description="snippets from the low deciles (0–2), else non-activating")
    tokens: int = Field(24, ge=4, description="tokens per snippet (cut around the strongest token)")
    logprobs: bool = Field(True, description="expected values from logprobs (else the integers written)")


def choose_snippets(record: FeatureRecord, cfg: SimulationConfig) -> list[tuple[str, Window]]:
    acts = record.activating("score")
    high = [w for w in acts if w.kind == "top"][: cfg.high]
    medium = [w for w in acts if w.kind == "quantile" and 3 <= (w.decile or 0) <= 6][: cfg.medium]
    low = [w for w in acts if w.kind == "quantile" and (w.decile or 0) <= 2][: cfg.low]
    low += record.negatives("score")[: cfg.low - len(low)]
    return [("high", w) for w in high] + [("medium", w) for w in medium] + [("low", w) for w in low]


def expected_values(tokens: list[str], logprobs: list[dict[str, float]], n: int) -> list[float] | None:
    """The expected value at each number of the JSON array in the generated text, or None when the numbers
    cannot be aligned (then the caller uses the integers as written)."""
    out: list[float] = []
    text = ""
    for i, (tok, top) in enumerate(zip(tokens, logprobs)):
        prev = text.rstrip()
        starts_number = tok.strip() in NUMBERS and "[" in text and (prev.endswith("[") or prev.endswith(","))
        text += tok
        if not starts_number:
            continue
        total = value = 0.0
        for cand, lp in top.items():
            v = NUMBERS.get(cand.strip())
            if v is None:
                continue
            p = math.exp(lp)
            if v == 1 and tok.strip() == "1" and i + 1 < len(tokens) and logprobs[i + 1]:
                nxt = logprobs[i + 1]
                p0 = sum(math.exp(q) for c, q in nxt.items() if c.strip() == "0")
                p_all = sum(math.exp(q) for c, q in nxt.items())
                v = 1 + 9 * (p0 / p_all if p_all else 0.0)
            total += p
            value += p * v
        out.append(value / total if total else float(NUMBERS[tok.strip()]))
    return out if len(out) == n else None


@SCORERS.register("simulation")
class Simulation(Scorer):
    name = "simulation"
    Config = SimulationConfig

    async def simulate(self, llm, explanation: str, tokens: list[str], feature: int) -> tuple[list[float], str]:
        n = len(tokens)
        schema = {"type": "object", "properties": {"activations": {
            "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 10},
            "minItems": n, "maxItems": n}}, "required": ["activations"]}
        listing = "\n".join(f"{i + 1}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(tokens))
        messages = template(__file__, "simulation").chat(explanation=explanation, n=n, tokens=listing)
        obj, comp = await llm.generate_json(messages, schema, max_tokens=8 + 4 * n, feature=feature,
                                            logprobs=10 if self.cfg.logprobs else None)
        written = [float(v) for v in obj["activations"]]
        if self.cfg.logprobs is False or not comp.logprobs or not comp.tokens:
            return written, "answers"
        ev = expected_values(comp.tokens[0], comp.logprobs[0], n)
        return (ev, "logprobs") if ev is not None else (written, "answers")

    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        chosen = [(level, *w.cut(self.cfg.tokens)) for level, w in choose_snippets(record, self.cfg)]
        if not chosen:
            return ScoreResult(None, {"error": "no score-pool snippets"})
        results = await asyncio.gather(*(self.simulate(llm, explanation, toks, record.feature)
                                         for _, toks, _ in chosen))
        rows, all_true, all_pred, per_snippet = [], [], [], []
        for (level, toks, acts), (pred, source) in zip(chosen, results):
            truth = (acts / record.max_act * 10) if record.max_act > 0 else acts
            r = pearson(truth, pred)
            if r is not None:
                per_snippet.append(r)
            all_true += truth.tolist()
            all_pred += list(pred)
            rows.append({"level": level, "tokens": toks, "true": truth.round(3).tolist(),
                         "predicted": [round(p, 3) for p in pred], "r": r, "from": source})
        pooled = pearson(all_true, all_pred)
        details = {"pooled_r": pooled, "mean_snippet_r": float(np.mean(per_snippet)) if per_snippet else None,
                   "snippets": rows}
        if pooled is None:  # Pearson r is undefined when either side does not vary
            side = "the predicted activations" if np.ptp(all_pred) == 0 else "the true activations"
            details["error"] = f"r undefined: {side} are constant over the {len(all_pred)} tokens"
        return ScoreResult(pooled, details)
