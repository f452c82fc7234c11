"""The end-to-end run on the tiny model + ground-truth SAE with a ScriptedLLM (canned replies, named as such):
every stage, the report from the store alone, resume after a crash without redoing or duplicating a finished
feature, and the CLI's run / score / report / trace commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import with_run
from saexplain.cli import app
from saexplain.errors import ConfigError
from saexplain.pipeline.runner import RunConfig, StageConfigs, choose_features, run_all
from saexplain.report import bootstrap_ci, summarize
from saexplain.store import Store
from saexplain.testing.scripted import ScriptedBackend, universal


def test_run_end_to_end_then_resume_without_redoing(cfgs):
    backend = ScriptedBackend(universal)
    msgs: list[str] = []
    h = run_all(cfgs, echo=msgs.append, backend=backend)
    # progress as it happens: each SAGE LLM step with its budget, each finished feature with the time left
    assert any(m.startswith("  feature 0 sage: analyze (LLM call 1 of at most") for m in msgs)
    done = [m for m in msgs if " finished (" in m]
    assert len(done) == 2 and "about" in done[0] and "left at the pace so far" in done[0] \
        and "(2/2 features" in done[1] and "left" not in done[1]
    with Store(cfgs.run.store) as db:
        exps = db.explanations(h.run_id)
        assert {(e["feature"], e["method"]) for e in exps} == {(0, "oneshot"), (0, "sage"), (1, "oneshot"), (1, "sage")}
        assert all(e["error"] is None for e in exps)
        scores = db.scores(h.run_id)
        assert len(scores) == 4 * 3
        gen = {(s["feature"], s["method"]): s["value"] for s in scores if s["scorer"] == "generation"}
        assert gen[(0, "oneshot")] == 1.0  # 'the word "wife"' on the feature that fires on "wife"
        # the agent's trace starts with what it measured before any LLM call, then the exemplars it was shown
        assert [s["kind"] for s in db.trace(h.run_id, 0, "sage")][:3] == ["corpus_evidence", "output_side", "exemplars"]
        calls = len(backend.requests)
    for name in ("report.md", "report.json", "report.png", "config.json"):
        assert (h.folder / name).stat().st_size > 0
    # the same command again: nothing recomputed, nothing duplicated
    again = ScriptedBackend(universal)
    h2 = run_all(cfgs, echo=lambda m: None, backend=again)
    assert h2.run_id == h.run_id and again.requests == [] and calls > 0
    with Store(cfgs.run.store) as db:
        assert [e["id"] for e in db.explanations(h.run_id)] == [e["id"] for e in exps]


def test_a_crash_mid_run_loses_no_finished_feature(cfgs):
    # one feature at a time, so that the crash falls in feature 1 (test_trust kills concurrent runs)
    cfgs = with_run(cfgs, run_concurrency=1)
    state = {"n": 0}

    def crashing(req):
        state["n"] += 1
        if state["n"] == 12:  # somewhere in feature 1's explanations: the process dies
            raise KeyboardInterrupt
        return universal(req)

    with pytest.raises(KeyboardInterrupt):
        run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(crashing))
    with Store(cfgs.run.store) as db:
        (run,) = db.runs("run")
        before = {(e["feature"], e["method"]): e["id"] for e in db.explanations(run["id"])}
        last_call = max(c["id"] for c in db.llm_calls(run["id"]))
    assert (0, "oneshot") in before and (0, "sage") in before and len(before) < 4
    run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    with Store(cfgs.run.store) as db:
        after = {(e["feature"], e["method"]): e["id"] for e in db.explanations(run["id"])}
        n = db.conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
        resumed = [c for c in db.llm_calls(run["id"]) if c["id"] > last_call]
    assert len(after) == 4 == n
    assert all(after[k] == v for k, v in before.items())  # finished work kept as it was
    explainer_calls = [c for c in resumed if _is_explainer(json.loads(c["request"])["messages"][0][1])]
    assert explainer_calls and {c["feature"] for c in explainer_calls} == {1}  # feature 0 was not redone


def _is_explainer(system: str) -> bool:
    return system.startswith("You are an interpretability researcher") or '{"explanation"' in system


def test_failed_explanations_are_recorded_and_retried(cfgs):
    def broken(req):
        if '{"explanation"' in req.messages[0][1]:
            return "no json"
        return universal(req)

    cfgs = with_run(cfgs, explainers="oneshot")
    h = run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(broken))
    with Store(cfgs.run.store) as db:
        rows = db.explanations(h.run_id)
        assert all(r["error"] and "not valid JSON" in r["error"] for r in rows)
        assert len(db.llm_calls(h.run_id, failed_only=True)) >= 2  # the call log has each failure
    run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    with Store(cfgs.run.store) as db:
        assert all(r["error"] is None for r in db.explanations(h.run_id))


def test_report_is_rebuilt_from_the_store_alone(cfgs, tmp_path):
    h = run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    first = (h.folder / "report.md").read_text()
    with Store(cfgs.run.store, readonly=True) as db:
        s = summarize(db, h.run_id)
    assert s["methods"] == ["oneshot", "sage"] and s["scorers"] == ["detection", "generation", "simulation"]
    cell = s["table"]["oneshot|generation"]
    assert cell["n"] == 2 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    assert "oneshot|generation" not in s["paired"] and s["paired"]["sage|generation"]["n"] == 2
    p = s["paired"]["sage|generation"]  # per-feature signs of the paired differences, from the same values
    diffs = [by["sage"]["scores"]["generation"] - by["oneshot"]["scores"]["generation"] for by in s["features"].values()]
    assert (p["wins"], p["losses"], p["ties"]) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs),
                                                   sum(d == 0 for d in diffs))
    res = CliRunner().invoke(app, ["report", "--run", str(h.run_id), "--store", cfgs.run.store,
                                   "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "report.md").read_text() == first
    assert "| oneshot |" in first and "Paired differences against oneshot" in first
    assert f"(n=2; {p['wins']} higher, {p['losses']} lower)" in first  # the counts a reader needs beside the CI


def test_cli_trace_and_score(cfgs, monkeypatch):
    h = run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    res = CliRunner().invoke(app, ["trace", "--run", str(h.run_id), "--feature", "0", "--store", cfgs.run.store])
    assert res.exit_code == 0, res.output
    for word in ("EXEMPLARS", "PROMPT analyze", "PROBE", "STATUS", "FINAL", "USAGE"):
        assert word in res.output
    res = CliRunner().invoke(app, ["trace", "--run", str(h.run_id), "--feature", "77", "--store", cfgs.run.store])
    assert res.exit_code == 2 and "no sage explanation of feature 77" in res.output


def test_bootstrap_ci_and_feature_choice():
    mean, lo, hi = bootstrap_ci([0.0, 1.0] * 20)
    assert mean == 0.5 and 0.3 < lo < 0.5 < hi < 0.7
    stats = [{"feature": i, "dead": i == 3, "frequency": f} for i, f in enumerate([0.5, 1e-3, 2e-3, 1e-3, 1e-6])]
    run = RunConfig()
    assert choose_features("top:2", stats, run) == [2, 1]
    assert set(choose_features("random:5", stats, run)) == {1, 2}  # the band, live only
    assert choose_features("4,0", stats, run) == [4, 0]
    with pytest.raises(ConfigError, match="unknown feature id 9"):
        choose_features("9", stats, run)
    with pytest.raises(ConfigError, match="top:N or random:N"):
        choose_features("best:3", stats, run)


def test_unknown_explainer_or_scorer_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown explainer 'sagee'"):
        StageConfigs(run=RunConfig(explainers="sagee"))
    with pytest.raises(ConfigError, match="unknown scorer 'detect'"):
        StageConfigs(run=RunConfig(scorers="detect"))


def test_an_edited_prompt_file_makes_its_explanations_again(cfgs, tmp_path, monkeypatch):
    import shutil

    import saexplain.explain.base as base

    cfgs = with_run(cfgs, explainers="oneshot", scorers="generation")
    backend = ScriptedBackend(universal)
    h = run_all(cfgs, echo=lambda m: None, backend=backend)
    with Store(cfgs.run.store) as db:
        first = {e["feature"]: e["id"] for e in db.explanations(h.run_id)}
        assert all(e["config_hash"] for e in db.explanations(h.run_id))
    calls = len(backend.requests)
    run_all(cfgs, echo=lambda m: None, backend=backend)  # unchanged: nothing redone
    assert len(backend.requests) == calls
    prompts = tmp_path / "prompts"
    shutil.copytree(base.PROMPTS, prompts)
    with open(prompts / "oneshot.toml", "a") as f:
        f.write("\n# edited\n")
    monkeypatch.setattr(base, "PROMPTS", prompts)
    run_all(cfgs, echo=lambda m: None, backend=backend)
    with Store(cfgs.run.store) as db:
        again = {e["feature"]: e["id"] for e in db.explanations(h.run_id)}
        assert again.keys() == first.keys() and not set(again.values()) & set(first.values())
        assert {s["explanation_id"] for s in db.scores(h.run_id)} == set(again.values())  # rescored, old scores gone
