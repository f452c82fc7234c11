"""Steering on the tiny model: the hook adds exactly strength × direction at the hookpoint, bisection reaches
the target KL, and the steering scorer's bookkeeping with a ScriptedLLM judge (canned answers, named as such)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from saexplain.sampling.record import FeatureRecord
from saexplain.score.steering import Steering, SteeringConfig
from saexplain.subject.oracle import Oracle, SubjectConfig
from saexplain.subject.steering import calibrate, kl_from_clean, next_token_logprobs, steered
from saexplain.testing.scripted import scripted_llm

PROMPTS = ["Once upon a time", "The king said"]


@pytest.fixture(scope="module")
def oracle(tiny_model_dir, sae_folders):
    return Oracle.from_config(SubjectConfig(model=str(tiny_model_dir), sae=str(sae_folders["topk"])))


def test_the_hook_adds_exactly_strength_times_direction(oracle):
    subject = oracle.subject
    ids = torch.tensor([subject.tokenize(["The king said hello"])[0][0]])
    d = oracle.decoder_direction(5)
    clean = subject.hidden(ids)
    with steered(subject, d, 2.5):
        pushed = subject.hidden(ids)
    torch.testing.assert_close(pushed - clean, (2.5 * d).expand_as(clean), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(subject.hidden(ids), clean)  # removed after the block


def test_bisection_reaches_the_target_kl(oracle):
    d = oracle.decoder_direction(5)
    d = d / d.norm()
    clean = next_token_logprobs(oracle.subject, PROMPTS)
    # the random tiny model's outputs are nearly uniform: aim at fractions of the KL its largest push reaches
    _, top = calibrate(oracle.subject, PROMPTS, d, 1e9)
    assert top > 0
    for target in (0.3 * top, 0.6 * top):
        for sign in (1.0, -1.0):
            strength, kl = calibrate(oracle.subject, PROMPTS, d, target, sign)
            assert strength * sign > 0
            assert kl == pytest.approx(target, rel=0.05, abs=1e-4)
            again = kl_from_clean(clean, next_token_logprobs(oracle.subject, PROMPTS, d, strength))
            assert again == pytest.approx(kl)
    strength, kl = calibrate(oracle.subject, PROMPTS, d, 2 * top)  # out of reach: the cap, and what it reached
    assert kl < 2 * top and strength > 0


def test_steering_scorer_bookkeeping(oracle):
    rec = FeatureRecord(5, 1.0)
    llm, backend = scripted_llm(lambda req: json.dumps({"answer": "B"}))
    cfg = SteeringConfig(prompts=PROMPTS, new_tokens=4)
    res = asyncio.run(Steering(cfg).score(rec, "anything", llm, oracle))
    d = res.details
    assert res.value == float(d["truth"] == "B") and d["chance"] == pytest.approx(1 / 3)
    assert sorted(s["feature"] for s in d["sets"].values())[0] != sorted(s["feature"] for s in d["sets"].values())[1]
    assert d["sets"][d["truth"]]["feature"] == 5
    for s in d["sets"].values():
        assert len(s["texts"]) == len(PROMPTS) * 4  # ±0.25, ±0.5
        assert [lv["target_kl"] for lv in s["levels"]] == [0.25, -0.25, 0.5, -0.5]
    prompt = backend.requests[0].messages[-1][1]
    assert "Set A" in prompt and "Set C" in prompt
