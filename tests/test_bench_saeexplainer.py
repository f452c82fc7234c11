"""bench/saeexplainer.py's text-form counts: what the trained explainer writes, counted from a report summary."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports bench/results.py as `results`
    try:
        spec = importlib.util.spec_from_file_location("bench_saeexplainer", BENCH / "saeexplainer.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def _row(text: str, status: str = "ok") -> dict:
    return {"description": text, "status": status}


def test_text_forms_counts_lists_repeats_function_words_and_changes(bench):
    summary = {"features": {
        "1": {"saeexplainer@sft": _row('the tokens "sitting", "sitting"'),
              "saeexplainer@round1": _row('the tokens "sitting", "standing"')},
        "2": {"saeexplainer@sft": _row('the tokens "and", "The", "of"'),
              "saeexplainer@round1": _row('the tokens "and", "The", "of"')},
        "3": {"saeexplainer@sft": _row("names of rivers"),
              "saeexplainer@round1": _row("", status="failed")},
        "4": {"oneshot": _row('"quoted" words')},
    }}
    forms = bench.text_forms(summary, ["saeexplainer@sft", "saeexplainer@round1"])
    assert forms["saeexplainer@sft"] == {"explanations": 3, "token_lists": 2, "repeated_token": 1,
                                         "function_words_only": 1}
    # the failed round-1 row is not an explanation; feature 1's text changed, feature 2's did not
    assert forms["saeexplainer@round1"] == {"explanations": 2, "token_lists": 2, "repeated_token": 0,
                                            "function_words_only": 1, "differs_from_sft": 1,
                                            "compared_with_sft": 2}
