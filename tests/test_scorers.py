"""Scorers: arithmetic, parsing and fault handling with a ScriptedLLM (canned replies, named as such), and
ground truth: on an SAE whose feature 0 fires on exactly one token ("▁wife") of the tiny model, the
explanation naming that token beats a wrong one on detection, generation, contrast, fuzzing and embedding."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from conftest import GOOD, WRONG, score
from saexplain.llm import LLMError, LLMParseError
from saexplain.pipeline.runner import score_stage
from saexplain.score import auroc, balanced_accuracy, pearson
from saexplain.score.classifier import DetectionConfig, FuzzingConfig
from saexplain.score.simulation import SimulationConfig, expected_values
from saexplain.testing.scripted import keyword_judge, last_user, scripted_llm, yes_no


# ------------------------------------------------------------------------------------------ arithmetic
def test_auroc_balanced_accuracy_and_pearson_arithmetic():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count half
    assert auroc([1, 2], [1, 1]) is None
    assert balanced_accuracy([True, True, False, False], [True, False, False, False]) == pytest.approx(
        (1.0 + 2 / 3) / 2)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None  # undefined, not 0


def test_simulation_expected_value_from_digit_logprobs():
    # '{"activations": [0, 10]}' as Qwen writes it: "10" is two tokens, "1" then "0"
    tokens = ['{"', "activations", '":', " [", "0", ",", " ", "1", "0", "]}"]
    lp = [{} for _ in tokens]
    lp[4] = {"0": math.log(0.8), "1": math.log(0.2)}
    lp[7] = {"1": math.log(0.5), "0": math.log(0.5)}
    lp[8] = {"0": 0.0}  # after "1", "0" is certain: the "1" was the start of "10"
    assert expected_values(tokens, lp, 2) == pytest.approx([0.2, 5.0])
    assert expected_values(tokens, lp, 3) is None  # misaligned: the caller falls back to the integers


# ---------------------------------------------------------------------------------------- ground truth
def test_record_pools_are_disjoint_and_negatives_silent(gt):
    r = gt["record"]
    assert r.activating("explain") and r.activating("score") and r.negatives("score")
    explain_ctx = {w.context for w in r.pool("explain")}
    assert explain_ctx.isdisjoint({w.context for w in r.pool("score")})
    for w in r.activating("score"):
        assert gt["word"] in w.text.lower()
    assert all(w.max_act == 0 for w in r.negatives("score"))


def test_ground_truth_detection_prefers_the_true_explanation(gt):
    good, _ = score("detection", DetectionConfig(), gt["record"], GOOD, keyword_judge, gt["oracle"])
    wrong, _ = score("detection", DetectionConfig(), gt["record"], WRONG, keyword_judge, gt["oracle"])
    assert good.value > 0.9 and good.details["metric"] == "auroc" and good.value == good.details["auroc"]
    assert wrong.value <= 0.6 and good.value > wrong.value + 0.3
    ba, _ = score("detection", DetectionConfig(metric="balanced_accuracy"), gt["record"], GOOD, keyword_judge,
                  gt["oracle"])
    assert ba.value == ba.details["balanced_accuracy"] > 0.9
    assert set(good.details["recall_by_decile"]) and all(v == 1.0 for v in good.details["recall_by_decile"].values())
    assert good.usage["calls"] == len(good.details["windows"])  # one window per question


def test_detection_several_windows_per_prompt(gt):
    def handler(req):
        text = last_user(req)
        lines = [ln for ln in text.splitlines() if ln[:1].isdigit()]
        hits = [i + 1 for i, ln in enumerate(lines) if " wife" in ln.lower()]
        return json.dumps({"matches": hits})

    res, backend = score("detection", DetectionConfig(per_prompt=5), gt["record"], GOOD, handler, gt["oracle"])
    assert res.value > 0.9 and res.details["auroc_from"] == "answers"
    assert len(backend.requests) == math.ceil(len(res.details["windows"]) / 5)


def test_shuffling_the_windows_does_not_change_detection(gt):
    values = [score("detection", DetectionConfig(seed=s, per_prompt=p), gt["record"], GOOD,
                    keyword_judge if p == 1 else _many_handler, gt["oracle"])[0].value
              for s in range(4) for p in (1, 4)]
    assert max(values) - min(values) <= 0.1  # truth stays aligned with each window whatever the order


def _many_handler(req):
    lines = [ln for ln in last_user(req).splitlines() if ln[:1].isdigit()]
    return json.dumps({"matches": [i + 1 for i, ln in enumerate(lines) if " wife" in ln.lower()]})


def test_ground_truth_generation_and_contrast(gt):
    good, _ = score("generation", None, gt["record"], GOOD, keyword_judge, gt["oracle"])
    wrong, _ = score("generation", None, gt["record"], WRONG, keyword_judge, gt["oracle"])
    assert good.value == 1.0 and wrong.value == 0.0
    assert all(s["relative"] >= 0.5 for s in good.details["sentences"])
    c_good, _ = score("contrast", None, gt["record"], GOOD, keyword_judge, gt["oracle"])
    c_wrong, _ = score("contrast", None, gt["record"], WRONG, keyword_judge, gt["oracle"])
    assert c_good.value == 1.0 and c_wrong.value == 0.0


def test_ground_truth_fuzzing(gt):
    good, _ = score("fuzzing", FuzzingConfig(), gt["record"], GOOD, keyword_judge, gt["oracle"])
    wrong, _ = score("fuzzing", FuzzingConfig(), gt["record"], WRONG, keyword_judge, gt["oracle"])
    assert good.value > 0.9 and wrong.value == 0.5


def test_ground_truth_embedding_real_minilm(gt):
    good, _ = score("embedding", None, gt["record"], "wife, wives, a husband and his wife", keyword_judge, gt["oracle"])
    wrong, _ = score("embedding", None, gt["record"], "stock market prices and interest rates", keyword_judge,
                     gt["oracle"])
    assert good.usage["calls"] == 0
    assert good.value > 0.8 and good.value > wrong.value


def test_simulation_perfect_and_malformed_predictions(gt):
    def perfect(req):
        text = last_user(req)
        toks = [json.loads(ln.split(". ", 1)[1]) for ln in text.splitlines() if ln[:1].isdigit() and ". " in ln]
        return json.dumps({"activations": [10 if t.strip().lower() == "wife" else 0 for t in toks]})

    res, _ = score("simulation", SimulationConfig(logprobs=False), gt["record"], GOOD, perfect, gt["oracle"])
    assert res.value == pytest.approx(1.0)
    levels = [s["level"] for s in res.details["snippets"]]
    assert levels.count("high") == 4

    def short(req):  # one number too few, every time: corrective retry, then a recorded parse failure
        return json.dumps({"activations": [0]})

    with pytest.raises(LLMParseError):
        score("simulation", SimulationConfig(logprobs=False), gt["record"], GOOD, short, gt["oracle"])


def test_p_yes_reads_logprobs_and_rejects_other_answers(gt):
    res, _ = score("detection", DetectionConfig(), gt["record"], GOOD, lambda r: yes_no(0.7), gt["oracle"])
    assert all(w["p_yes"] == pytest.approx(0.7) for w in res.details["windows"])
    with pytest.raises(LLMError):
        score("detection", DetectionConfig(logprobs=False), gt["record"], GOOD, lambda r: "maybe", gt["oracle"])


def test_score_stage_records_failures_and_retries_them(gt, tmp_path):
    h, store = gt["handle"], gt["store"]
    store.put_explanation(h.run_id, 0, "oneshot", GOOD, [], {}, {}, [])
    calls = {"n": 0}

    def flaky(req):
        calls["n"] += 1
        return "maybe"

    llm, _ = scripted_llm(flaky, store=store)
    c = asyncio.run(score_stage(h, store, llm, gt["oracle"], ["detection"], echo=lambda m: None))
    assert c["failed"] == 1
    (row,) = [s for s in store.scores(h.run_id) if s["feature"] == 0]
    assert row["value"] is None and "yes or no" in row["error"]
    llm, _ = scripted_llm(keyword_judge, store=store)
    c = asyncio.run(score_stage(h, store, llm, gt["oracle"], ["detection"], echo=lambda m: None))
    assert c["done"] == 1 and c["failed"] == 0
    (row,) = [s for s in store.scores(h.run_id) if s["feature"] == 0]
    assert row["error"] is None and row["value"] > 0.9
    c = asyncio.run(score_stage(h, store, llm, gt["oracle"], ["detection"], echo=lambda m: None))
    assert c == {"done": 0, "skipped": 1, "degraded": 0, "failed": 0}  # finished work is not redone
