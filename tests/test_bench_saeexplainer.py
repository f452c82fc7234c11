"""bench/saeexplainer.py's text-form counts (what the trained explainer writes, counted from a report summary) and
bench/saeexplainer_compare_rounds.py's round figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str):
    """bench/<name>.py as a module (the scripts import bench/results.py as `results`)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def bench():
    return _bench_module("saeexplainer")


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


def _line(feature: int, *rewards) -> dict:
    return {"feature": feature, "candidates": [{"text": f"c{i}", "reward": r} for i, r in enumerate(rewards)]}


def test_compare_rounds_counts_only_features_both_rounds_rewarded():
    mod = _bench_module("saeexplainer_compare_rounds")
    r1 = {1: _line(1, 0.2, 0.4), 2: _line(2, 0.0, None), 3: _line(3, None, None), 4: _line(4, 0.9)}
    r2 = {1: _line(1, 0.6, 0.8), 2: _line(2, 0.5), 3: _line(3, 1.0)}  # 3: round 1 has no reward; 4: no round 2
    fig = mod.compare_rounds(r1, r2)
    assert fig["features"] == 2
    assert fig["mean"] == pytest.approx({"round1": (0.2 + 0.4 + 0.0) / 3, "round2": (0.6 + 0.8 + 0.5) / 3})
    assert fig["best"] == pytest.approx({"round1": (0.4 + 0.0) / 2, "round2": (0.8 + 0.5) / 2})


def test_reward_agreement_within_features_and_pairs_ordered_by_the_other_reward():
    mod = _bench_module("saeexplainer_compare_rounds")
    mine = mod.by_text({1: _line(1, 0.1, 0.5, 0.9), 2: _line(2, 1.0, 0.0, None), 3: _line(3, 0.3, 0.3)})
    other = mod.by_text({1: _line(1, 0.0, 0.2, 0.4), 2: _line(2, 0.0, 1.0), 3: _line(3, 0.1, 0.7), 4: _line(4, 1.0)})
    assert mine[2] == {"c0": 1.0, "c1": 0.0}  # a failed reward is no reward
    ag = mod.reward_agreement(mine, other)
    # feature 1 agrees (+1), 2 disagrees (−1), 3 has one reward constant here: left out of the correlation
    assert ag == {"candidates": 7, "features": 2, "median": pytest.approx(0.0), "mean": pytest.approx(0.0),
                  "mean_here": pytest.approx(3.1 / 7), "mean_other": pytest.approx(2.4 / 7)}
    pairs = [(1, " c2", " c0"), (2, " c0", " c1"), (3, " c0", " c1"), (1, " c2", " missing")]
    assert mod.pairs_ordered(pairs, other) == {"pairs": 3, "same": 1, "tie": 0, "reversed": 2}
    assert mod.pairs_ordered(pairs, mine)["tie"] == 1  # feature 3's two candidates tie here


def test_dropped_reasons_count_a_reason_whatever_its_figures():
    mod = _bench_module("saeexplainer_compare_rounds")
    dropped = {"1": "best reward 0.000 < 0.1", "2": "best reward 0.050 < 0.1", "3": "spread 0.000 ≤ 0.1",
               "4": "no lower-half candidate trails the best by > 0.311 (2 σ of the noise)"}
    assert mod.dropped_reasons(dropped) == {"best reward": 2, "spread": 1,
                                            "no lower-half candidate trails the best by >": 1}


def test_check_summary_means_by_epoch_and_changes_to_the_kept_and_last_epochs():
    mod = _bench_module("saeexplainer_compare_rounds")

    def rows(*items):
        return [{"feature": f, "text": t, "reward": r, "error": None if r is not None else "x"} for f, t, r in items]

    state = {"best_epoch": 1, "epochs": [
        {"epoch": 0, "features": rows((1, "a", 0.0), (2, "b", 1.0), (3, "c", 0.5), (4, "d", None))},
        {"epoch": 1, "features": rows((1, "a2", 1.0), (2, "b", 0.5), (3, "c", 0.5), (4, "d2", 1.0))},
        {"epoch": 2, "features": rows((1, "a3", 0.0), (2, "b", 0.0), (3, "c3", 0.0), (4, "d", 0.0))}]}
    c = mod.check_summary(state)
    assert c["means"] == pytest.approx({0: 0.5, 1: 0.75, 2: 0.0}) and c["kept"] == 1 and c["features"] == 4
    assert (c["rose"], c["fell"], c["changed"]) == (1, 1, 2)  # feature 4's failed reward is not compared
    assert c["last"] == 2 and (c["last_rose"], c["last_fell"], c["last_changed"]) == (0, 2, 2)
    sub = mod.check_summary(state, {1, 2})
    assert sub["means"] == pytest.approx({0: 0.5, 1: 0.75, 2: 0.0}) and sub["features"] == 2
    assert (sub["rose"], sub["fell"], sub["changed"]) == (1, 1, 1)


def test_unseen_check_reads_models_deltas_and_counts_moves(tmp_path):
    mod = _bench_module("saeexplainer_unseen_check")
    assert mod.raw_name(None, False) == "saeexplainer_unseen_check"
    assert mod.raw_name(144, True) == "saeexplainer_unseen_check144_generation"  # the committed record's name
    assert mod.raw_name(144, True, "g1") == "saeexplainer_unseen_check144_generation_g1"
    with pytest.raises(SystemExit, match="FOLDER:STAGE"):
        mod.parse_model(f"{tmp_path}:round3")
    with pytest.raises(SystemExit, match="no trained adapter"):
        mod.parse_model(f"{tmp_path}:round1")
    (tmp_path / "round1" / "adapter").mkdir(parents=True)
    (tmp_path / "round1" / "adapter" / "adapter_config.json").write_text("{}")
    raw = tmp_path / "raw.json"
    raw.write_text('{"figures": {"round1_minus_sft_gen": {"delta": 0.025}}}')
    folder, stage, path = mod.parse_model(f"{tmp_path}:round1:{raw}")
    assert (folder, stage, path) == (tmp_path, "round1", raw)
    assert mod.heldout_delta("round1", raw) == pytest.approx(2.5) and mod.heldout_delta("sft", None) == 0.0
    assert mod.heldout_delta("round1", None) is None
    with pytest.raises(SystemExit, match="no round2_minus_sft_gen"):
        mod.heldout_delta("round2", raw)
    base = [{"feature": 1, "text": "a", "reward": 0.0}, {"feature": 2, "text": "b", "reward": 1.0},
            {"feature": 3, "text": "c", "reward": None}]
    other = [{"feature": 1, "text": "a2", "reward": 1.0}, {"feature": 2, "text": "b", "reward": 1.0},
             {"feature": 3, "text": "c2", "reward": 1.0}]
    by = {x["feature"]: x for x in base}, {x["feature"]: x for x in other}
    assert mod.moves(*by) == {"rose": 1, "fell": 0, "changed": 2}  # 3's failed reward not compared; text changed
    mean, lo, hi = mod.paired_delta(base, other)  # +100 and 0 points over features 1 and 2
    assert mean == pytest.approx(50.0) and 0.0 <= lo <= mean <= hi <= 100.0


def test_results_record_counts_an_untracked_script_as_uncommitted(tmp_path):
    """bench/results.py's `uncommitted_changes_at_start`: an untracked script under bench/ or src/ is code the
    named commit does not hold; results and state the benchmarks write are not."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "src").mkdir()
    shutil.copy(BENCH / "results.py", repo / "bench" / "results.py")

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                       capture_output=True)

    def dirty() -> bool:
        spec = importlib.util.spec_from_file_location("results_copy", repo / "bench" / "results.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.STARTED_DIRTY

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    (repo / "bench" / "results" / "new.json").write_text("{}")
    (repo / "bench" / "state").mkdir()
    (repo / "bench" / "state" / "snap.tar.gz").write_text("x")
    assert dirty() is False
    (repo / "bench" / "new_bench.py").write_text("print(1)\n")
    assert dirty() is True
    (repo / "bench" / "new_bench.py").unlink()
    (repo / "src" / "mod.py").write_text("x = 1\n")
    assert dirty() is True


def test_sample_size_pairs_features_both_scored_and_sizes_from_the_unseen_spread():
    mod = _bench_module("saeexplainer_sample_size")
    unseen_raw = {"raw": [
        {"folder": "/x/bench-a", "stage": "sft", "features": [{"feature": f, "reward": 0.5} for f in range(4)]},
        {"folder": "/x/bench-a", "stage": "round2",
         "features": [{"feature": 0, "reward": 1.0}, {"feature": 1, "reward": 0.5}, {"feature": 2, "reward": 0.75},
                      {"feature": 3, "reward": None}]},
        {"folder": "/x/bench-b", "stage": "round2",
         "features": [{"feature": 0, "reward": 0.0}, {"feature": 1, "reward": 0.5}]}]}
    heldout_raw = {"raw": {"values": {
        "saeexplainer@sft|generation": {"7": 0.0, "8": 1.0, "9": None},
        "saeexplainer@round2|generation": {"7": 0.5, "8": 1.0, "9": 1.0},
        "saeexplainer@round2|detection": {"7": 9.0}, "oneshot|generation": {"7": 9.0}}}}
    rows = mod.compare(mod.unseen_values(unseen_raw, "bench-a"), mod.heldout_values(heldout_raw))
    assert [r["stage"] for r in rows] == ["round2"]  # round1 is in neither file
    (r,) = rows
    assert r["unseen"]["n"] == 3 and r["unseen"]["mean"] == pytest.approx(25.0)  # 50, 0, 25; the None left out
    assert r["heldout"]["n"] == 2 and r["heldout"]["mean"] == pytest.approx(25.0)  # 50, 0; 9 has no SFT score
    assert r["unseen"]["sd"] == pytest.approx(25.0)
    assert r["gap"] == pytest.approx(0.0)
    assert r["needed"]["gain5"] == 97  # (1.96 × 25 / 5)² = 96.04 → 97
    assert r["needed"]["gain10_power80"] == 50  # (2.80 × 25 / 10)² = 49.05 → 50
    # a folder checked on round 2 only (it reused bench-a's SFT model): bench-a's SFT row is its baseline
    assert mod.compare(mod.unseen_values(unseen_raw, "bench-b"), mod.heldout_values(heldout_raw)) == []
    (b,) = mod.compare(mod.unseen_values(unseen_raw, "bench-b", "bench-a"), mod.heldout_values(heldout_raw))
    assert b["unseen"]["n"] == 2 and b["unseen"]["mean"] == pytest.approx(-25.0)  # -50, 0


def test_heldout_compare_diffs_levels_and_same_texts_from_raw_files():
    mod = _bench_module("saeexplainer_heldout_compare")

    def raw(rows):  # feature → {stage: (generation, text)}
        return {"raw": {"features": {str(f): {f"saeexplainer@{s}": {"description": t, "scores": {"generation": g}}
                                              for s, (g, t) in st.items()} for f, st in rows.items()}}}
    a = raw({1: {"sft": (0.0, "x"), "round1": (1.0, "y")}, 2: {"sft": (1.0, "z"), "round1": (0.5, "z2")},
             3: {"sft": (0.5, "w"), "round1": (0.5, "w")}, 4: {"sft": (None, "v"), "round1": (1.0, "v")}})
    sft, r1 = mod.stage_rows(a, "sft"), mod.stage_rows(a, "round1")
    d = mod.diff(sft, r1)
    assert (d["n"], d["up"], d["down"], d["same_text"]) == (3, 1, 1, 2)  # feature 4 unscored by SFT; w and v same
    assert d["mean"] == pytest.approx((100 - 50 + 0) / 3)
    assert mod.by_sft_level(sft, r1) == {"0": (1, 100.0), "between": (1, 0.0), "1": (1, -50.0)}
    assert mod.parse_model("g2=bench/x.json:round2") == ("g2", Path("bench/x.json"), "round2")
    with pytest.raises(SystemExit, match="LABEL=RAW_JSON:STAGE"):
        mod.parse_model("bench/x.json:round2")
    with pytest.raises(SystemExit, match="no saeexplainer@round2 rows"):
        mod.stage_rows(a, "round2")
