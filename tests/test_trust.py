"""Trustworthy results: a failure is never stored as a result, a score never lands on a text it was not computed
on, and a resumed run stores what an uninterrupted one stores. Runs talk to a fake OpenAI-compatible server in a
separate process (saexplain.testing.fake_server: canned replies, named as a fake) or to a ScriptedLLM."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import GOOD, make_record, score, stored_results, with_run
from saexplain.cli import app
from saexplain.errors import SaexplainError
from saexplain.explain.sage import SAGE, SAGEConfig
from saexplain.llm import LLM, LLMConfig
from saexplain.llm.base import Backend, LLMError, Usage
from saexplain.llm.client import _cost
from saexplain.net import free_port
from saexplain.pipeline.runner import StageConfigs, run_all
from saexplain.report import summarize
from saexplain.score.classifier import DetectionConfig
from saexplain.status import Status
from saexplain.store import RunBusy, StaleScore, Store
from saexplain.testing.fake_server import FaultServer, FaultServerProcess
from saexplain.testing.scripted import Script, ScriptedBackend, scripted_llm, universal, yes_no

QUIET = {"echo": lambda m: None}


# ------------------------------------------------------------------------------- failures never pass as results
def test_sage_llm_faults_make_a_degraded_explanation_that_is_not_scored_and_is_retried(cfgs):
    port = free_port()
    llm = LLMConfig(llm=f"openai-compatible:http://127.0.0.1:{port}/v1#fake", retries=0)
    c = with_run(cfgs, llm, explainers="sage", scorers="generation")
    with FaultServerProcess("sage_design_fails", port=port) as server:
        h = run_all(c, **QUIET)
        first = server.requests
    assert first > 0 and not h.ok and h.counts["explain"]["degraded"] == 2
    with Store(c.run.store) as db:
        rows = db.explanations(h.run_id)
        assert [r["status"] for r in rows] == ["degraded", "degraded"]
        assert all("design" in r["error"] and r["evidence"]["stop_reason"] == "llm_error" for r in rows)
        assert db.scores(h.run_id) == []  # a degraded explanation is not scored
        s = summarize(db, h.run_id)
        assert s["explanation_status"]["sage"] == {"ok": 0, "degraded": 2, "failed": 0}
        assert s["table"]["sage|generation"]["n"] == 0
        assert db.run(h.run_id)["status"] == "incomplete"
    # the same command against a healthy server: the degraded explanations are asked again, and replaced
    with FaultServerProcess("universal", port=port) as server:
        h2 = run_all(c, **QUIET)
        assert server.requests > 0
    assert h2.run_id == h.run_id and h2.ok and h2.counts["explain"]["done"] == 2
    with Store(c.run.store) as db:
        rows = db.explanations(h.run_id)
        assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["error"] is None for r in rows)
        assert len(db.scores(h.run_id)) == 2
        assert db.run(h.run_id)["status"] == "complete"


def test_run_and_score_commands_exit_non_zero_when_anything_failed(cfgs):
    port = free_port()
    args = ["run", "--features", "0,1", "--explainers", "oneshot", "--scorers", "generation",
            "--store", cfgs.run.store, "--model", cfgs.subject.model, "--sae", cfgs.subject.sae,
            "--corpus", cfgs.corpus.corpus[0], "--context", "48", "--tokens", "30000", "--window", "16",
            "--llm", f"openai-compatible:http://127.0.0.1:{port}/v1#fake", "--retries", "0"]
    with FaultServerProcess("always_500", port=port):
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "explain: 2 failed, 0 degraded" in res.output
    with FaultServerProcess("universal", port=port):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        with Store(cfgs.run.store) as db:
            (run,) = db.runs("run")
        res = CliRunner().invoke(app, ["score", "--run", str(run["id"]), "--scorers", "detection",
                                       "--store", cfgs.run.store])
        assert res.exit_code == 0, res.output
    with FaultServerProcess("always_500", port=port):
        res = CliRunner().invoke(app, ["score", "--run", str(run["id"]), "--scorers", "embedding,detection",
                                       "--store", cfgs.run.store])
    assert res.exit_code == 0, res.output  # embedding needs no LLM; detection is done already
    with Store(cfgs.run.store) as db:
        db.conn.execute("DELETE FROM scores WHERE scorer='detection'")
        db.conn.execute("DELETE FROM llm_cache")  # asked afresh
    with FaultServerProcess("always_500", port=port):
        res = CliRunner().invoke(app, ["score", "--run", str(run["id"]), "--scorers", "detection",
                                       "--store", cfgs.run.store])
    assert res.exit_code == 1 and "score: 2 failed" in res.output, res.output


def test_hand_written_explanations_are_scored_beside_the_explainers_on_the_same_windows(cfgs, tmp_path):
    """`score --feature N --text "…"` (and --texts FILE) adds a hand-written explanation as its own method, scored
    by the run's scorers on the same score pool and judge, and reported in the same table."""
    port = free_port()
    args = ["run", "--features", "0,1", "--explainers", "oneshot", "--scorers", "detection,generation",
            "--store", cfgs.run.store, "--model", cfgs.subject.model, "--sae", cfgs.subject.sae,
            "--corpus", cfgs.corpus.corpus[0], "--context", "48", "--tokens", "30000", "--window", "16",
            "--llm", f"openai-compatible:http://127.0.0.1:{port}/v1#fake"]
    texts = tmp_path / "truth.jsonl"
    texts.write_text(json.dumps({"feature": 1, "text": 'the word "water"}', "method": "truth"}) + "\n")
    with FaultServerProcess("universal", port=port):
        assert CliRunner().invoke(app, args).exit_code == 0
        with Store(cfgs.run.store) as db:
            (run,) = db.runs("run")
        score = ["score", "--run", str(run["id"]), "--store", cfgs.run.store]
        res = CliRunner().invoke(app, [*score, "--feature", "0", "--text", 'the word "wife"', "--method", "truth",
                                       "--texts", str(texts)])
        assert res.exit_code == 0, res.output
        assert "2 added" in res.output
        again = CliRunner().invoke(app, [*score, "--feature", "0", "--text", 'the word "wife"', "--method", "truth"])
        assert "0 added, 1 already stored" in again.output and "score: 0 new" in again.output
        bad = CliRunner().invoke(app, [*score, "--feature", "0", "--text", "x", "--method", "oneshot"])
        assert bad.exit_code == 2 and "a name of their own" in bad.output
        unpaired = CliRunner().invoke(app, [*score, "--feature", "0", "--feature", "1", "--text", "x"])
        assert unpaired.exit_code == 2 and "come in pairs" in unpaired.output
    with Store(cfgs.run.store) as db:
        rows = {(s["feature"], s["method"], s["scorer"]): s for s in db.scores(run["id"])}
        truth = {e["feature"]: e["description"] for e in db.explanations(run["id"]) if e["method"] == "truth"}
    assert truth == {0: 'the word "wife"', 1: 'the word "water"'}  # stored as clean text
    for f in (0, 1):
        for scorer in ("detection", "generation"):
            t, o = rows[(f, "truth", scorer)], rows[(f, "oneshot", scorer)]
            assert t["status"] == "ok"
            if scorer == "detection":  # the same score-pool windows as the explainer's score
                assert [w["text"] for w in t["details"]["windows"]] == [w["text"] for w in o["details"]["windows"]]
    assert rows[(0, "truth", "detection")]["value"] > rows[(1, "truth", "detection")]["value"]
    report = (Path(cfgs.run.store).parent / f"{Path(cfgs.run.store).stem}-runs" / str(run["id"]) / "report.md")
    assert "truth" in report.read_text()


def test_a_failed_redo_keeps_the_good_explanation_and_its_scores(cfgs, monkeypatch):
    from saexplain.explain.oneshot import OneShot

    c = with_run(cfgs, LLMConfig(cache=False), explainers="oneshot", scorers="generation")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    with Store(c.run.store) as db:
        before = {e["feature"]: e for e in db.explanations(h.run_id)}
        scores = db.scores(h.run_id)
    assert len(scores) == 2 and all(e["status"] == "ok" for e in before.values())

    monkeypatch.setattr(OneShot, "fingerprint", lambda self: "another prompt")  # e.g. an edited template
    h2 = run_all(c, backend=ScriptedBackend(lambda r: "no json" if '{"explanation"' in r.messages[0][1]
                                            else universal(r)), **QUIET)
    assert h2.counts["explain"]["failed"] == 2 and not h2.ok
    with Store(c.run.store) as db:
        after = {e["feature"]: e for e in db.explanations(h.run_id)}
        assert {f: e["id"] for f, e in after.items()} == {f: e["id"] for f, e in before.items()}
        assert all(e["status"] == "ok" and e["description"] == before[f]["description"] for f, e in after.items())
        assert all("not valid JSON" in e["redo_error"] for e in after.values())
        assert db.scores(h.run_id) == scores
    # a later success replaces it (and its scores, which judged the old text)
    h3 = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    assert h3.ok
    with Store(c.run.store) as db:
        final = {e["feature"]: e for e in db.explanations(h.run_id)}
        assert all(e["config_hash"] == "another prompt" and e["redo_error"] is None for e in final.values())
        assert not {e["id"] for e in final.values()} & {e["id"] for e in before.values()}


def test_p_yes_records_per_window_where_it_came_from(gt):
    n = {"i": 0}

    def half_without_logprobs(req):
        n["i"] += 1
        text, lp = yes_no(0.9 if "wife" in req.messages[-1][1].lower() else 0.1)
        return (text, {"maybe": -0.1}) if n["i"] % 2 else (text, lp)  # every other: no yes/no in the top tokens

    res, _ = score("detection", DetectionConfig(), gt["record"], GOOD, half_without_logprobs, gt["oracle"])
    sources = [w["from"] for w in res.details["windows"]]
    assert set(sources) == {"logprobs", "text"}
    assert res.details["auroc_from"] == "mixed" and res.details["windows_from_logprobs"] == sources.count("logprobs")
    assert res.status == "degraded" and "balanced accuracy" in res.reason
    assert res.value == res.details["balanced_accuracy"]
    ok, _ = score("detection", DetectionConfig(), gt["record"], GOOD, lambda r: yes_no(0.8), gt["oracle"])
    assert ok.status == "ok" and ok.details["auroc_from"] == "logprobs"
    assert {w["from"] for w in ok.details["windows"]} == {"logprobs"}


class Exploding(Backend):
    name, model = "exploding", "x"

    def __init__(self, exc):
        self.exc, self.calls = exc, 0

    async def complete(self, request, timeout):
        self.calls += 1
        raise self.exc


def test_bugs_and_out_of_memory_are_not_endpoint_faults():
    for exc in (RuntimeError("CUDA out of memory"), ValueError("a bug"), KeyError("k")):
        backend = Exploding(exc)
        llm = LLM(LLMConfig(retries=3, backoff=0), backend=backend)
        with pytest.raises(type(exc)) as info:
            asyncio.run(llm.generate(prompt="x"))
        assert not isinstance(info.value, LLMError) and backend.calls == 1  # not retried


def test_transformers_backend_passes_errors_through_unwrapped(tiny_model_dir, monkeypatch):
    from saexplain.llm.inprocess import Transformers

    backend = Transformers(str(tiny_model_dir), "cpu")

    def oom(requests, texts):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backend, "_generate", oom)
    llm = LLM(LLMConfig(retries=3, backoff=0), backend=backend)
    with pytest.raises(RuntimeError, match="out of memory"):
        asyncio.run(llm.generate(prompt="x"))


def test_openai_compatible_reply_parse_bugs_are_not_malformed_replies(monkeypatch):
    from saexplain.llm.openai_compat import OpenAICompatible

    def broken_parse(self, resp, request, seconds):
        raise ValueError("a bug in our parsing")

    monkeypatch.setattr(OpenAICompatible, "_parse", broken_parse)
    with FaultServer(default_text="fine") as server:
        llm = LLM(LLMConfig(llm=f"openai-compatible:{server.url}#m", retries=3, backoff=0))
        with pytest.raises(ValueError, match="a bug"):
            asyncio.run(llm.generate(prompt="x"))
        assert len(server.requests) == 1
    with FaultServer([("malformed",), ("ok", "fine")]) as server:  # a malformed reply is still retried
        llm = LLM(LLMConfig(llm=f"openai-compatible:{server.url}#m", retries=3, backoff=0))
        monkeypatch.undo()
        assert asyncio.run(llm.generate(prompt="x")).text == "fine"


def test_unknown_model_costs_are_unknown_not_zero():
    assert _cost("some-local-model", 1000, 1000) is None
    assert _cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    u = Usage(cost=0.5)
    u.add(Usage(cost=None))
    assert u.cost is None
    with FaultServer(default_text="hi") as server:
        llm = LLM(LLMConfig(llm=f"openai-compatible:{server.url}#mystery", cache=False))
        asyncio.run(llm.generate(prompt="x"))
    assert llm.usage.calls == 1 and llm.usage.cost is None
    local, _ = scripted_llm(lambda r: "hi")
    asyncio.run(local.generate(prompt="x"))
    assert local.usage.cost is None  # the scripted fake is not marked local: unknown as well


def test_scores_without_a_value_are_counted_not_dropped(cfgs):
    c = with_run(cfgs, explainers="oneshot", scorers="generation,simulation")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    with Store(c.run.store) as db:
        eid = db.explanations(h.run_id)[0]["id"]
        text = db.explanations(h.run_id)[0]["description"]
        db.put_score(eid, "simulation", None, {}, {}, error="no score-pool snippets", text=text, status="degraded")
        s = summarize(db, h.run_id)
    cell = s["table"]["oneshot|simulation"]
    assert cell["degraded"] == 1 and cell["n"] == 1  # one scored, one without a value: counted apart


# ------------------------------------------------------------------------------------ rows keep their identity
def test_statuses_are_one_enum_ordered_by_worth_and_checked_at_the_store(tmp_path):
    """Status is the one vocabulary of every stage: a row is replaced only by one at least as good, an unknown
    status or a non-ok row without its reason is refused, and rows read back compare equal to the enum."""
    assert [s.worth for s in (Status.FAILED, Status.DEGRADED, Status.OK)] == [0, 1, 2]
    with Store(tmp_path / "s.db") as db:
        run = db.get_or_create_run("run", "k", "{}")
        args = (run, 3, "oneshot", "text", [], {}, {}, [])
        assert db.put_explanation(*args, status="ok") is not None
        assert db.put_explanation(*args, error="the LLM timed out", status=Status.DEGRADED) is None  # kept the ok
        (row,) = db.explanations(run)
        assert row["status"] == Status.OK and row["redo_error"].startswith("degraded")
        with pytest.raises(ValueError, match="unknown status 'fine'"):
            db.put_explanation(*args, status="fine")
        with pytest.raises(ValueError, match="needs its reason"):
            db.put_explanation(*args, status=Status.FAILED)


def test_explanation_ids_are_never_reused_and_scores_follow_their_text(tmp_path):
    with Store(tmp_path / "s.db") as db:
        run = db.get_or_create_run("run", "h", "{}")
        a = db.put_explanation(run, 0, "oneshot", "first text", [], {}, {}, [])
        b = db.put_explanation(run, 0, "oneshot", "second text", [], {}, {}, [])  # replaces the top row
        assert b > a
        db.conn.execute("DELETE FROM explanations WHERE id=?", (b,))
        c = db.put_explanation(run, 0, "oneshot", "third text", [], {}, {}, [])
        assert c > b  # the deleted top id is not handed out again
        with pytest.raises(StaleScore):
            db.put_score(c, "generation", 0.5, {}, {}, text="second text")  # computed on another text
        with pytest.raises(StaleScore):
            db.put_score(b, "generation", 0.5, {}, {}, text="second text")  # on a row that is gone
        db.put_score(c, "generation", 0.7, {}, {}, text="third text")
        assert [s["value"] for s in db.scores(run)] == [0.7]
        # a worse result never replaces a better one
        assert db.put_score(c, "generation", None, {}, {}, error="HTTP 500", text="third text") is False
        assert db.score(c, "generation")["status"] == "ok"


def test_a_second_process_on_the_same_run_is_refused_until_the_first_stops(cfgs):
    c = with_run(cfgs, explainers="oneshot", scorers="generation")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    code = ("import sys, time; from saexplain.store import Store; db = Store(sys.argv[1]); "
            "db.claim_run(int(sys.argv[2])); print('claimed', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, c.run.store, str(h.run_id)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        with pytest.raises(RunBusy, match=f"run {h.run_id} is being written by another process"):
            run_all(c, backend=ScriptedBackend(universal), **QUIET)
        res = CliRunner().invoke(app, ["score", "--run", str(h.run_id), "--store", c.run.store])
        assert res.exit_code == 2 and "being written by another process" in res.output
    finally:
        proc.kill()
        proc.wait()
    h2 = run_all(c, backend=ScriptedBackend(universal), **QUIET)  # its process is gone: the lease is free
    assert h2.run_id == h.run_id and h2.ok
    with Store(c.run.store) as db:
        assert db.run(h.run_id)["owner"] is None  # released at the end


def test_two_concurrent_runs_on_one_store_never_attach_a_score_to_another_text(cfgs, tmp_path):
    """Two processes run the same command at once: one is refused (one line), the other completes; every
    stored score is on the text it was computed on."""
    port = free_port()
    args = [sys.executable, "-m", "saexplain.cli", "run", "--features", "0,1", "--explainers", "oneshot,sage",
            "--scorers", "generation,detection", "--store", cfgs.run.store, "--model", cfgs.subject.model,
            "--sae", cfgs.subject.sae, "--corpus", cfgs.corpus.corpus[0], "--context", "48", "--tokens", "30000",
            "--window", "16", "--sage-selection", "none",
            "--llm", f"openai-compatible:http://127.0.0.1:{port}/v1#fake"]
    with FaultServerProcess("universal", port=port):
        first = subprocess.run(args[:4] + ["--features", "0", "--explainers", "oneshot"] + args[8:],
                               capture_output=True, text=True, timeout=300)  # makes the cache and the run
        assert first.returncode == 0, first.stderr
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0, outs
    if codes[1] != 0:  # the second came while the first held the run
        (err,) = [e for p, (_, e) in zip(procs, outs) if p.returncode != 0]
        assert "being written by another process" in err and "Traceback" not in err
    with Store(cfgs.run.store) as db:
        (run,) = db.runs("run")
        n = db.conn.execute("SELECT COUNT(*) FROM scores s JOIN explanations e ON e.id = s.explanation_id "
                            "WHERE s.text_hash != e.text_hash").fetchone()[0]
        assert n == 0
        assert len(db.explanations(run["id"])) == 4 and len(db.scores(run["id"])) == 8


def test_a_sage_run_killed_midway_resumes_to_what_an_uninterrupted_run_stores(wife, tmp_path):
    record = make_record(wife, ["His wife came home.", "The wife and the husband.", "A wife sang.",
                                "The river ran.", "The sky was blue."])
    cfg = SAGEConfig(selection="none", max_llm_calls=7)  # the call budget binds: cached replies must count

    def explain(db, handler):
        llm = LLM(LLMConfig(retries=0, cache=True), store=db, backend=ScriptedBackend(handler))
        return asyncio.run(SAGE(cfg).explain(record, llm, wife))

    with Store(tmp_path / "a.db") as db:
        whole = explain(db, Script())
    with Store(tmp_path / "b.db") as db:
        script, n = Script(), {"i": 0}

        def dies_at_the_fourth_call(req):
            n["i"] += 1
            if n["i"] == 4:
                raise KeyboardInterrupt
            return script(req)

        with pytest.raises(KeyboardInterrupt):
            explain(db, dies_at_the_fourth_call)
        resumed = explain(db, Script())
    assert resumed.description == whole.description and resumed.labels == whole.labels
    assert resumed.evidence == whole.evidence
    assert resumed.usage["cached"] == 3 and resumed.usage["calls"] + 3 == whole.usage["calls"]


# ---------------------------------------------------------------------------------------------- data at rest
def test_bad_arguments_are_one_line_before_anything_is_opened(tmp_path):
    """An out-of-range port and an unknown export format are refused from the arguments alone: no traceback,
    and no complaint about a store that was never needed (the store here does not exist)."""
    res = CliRunner().invoke(app, ["serve", "--port", "99999", "--no-probe", "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "--port" in res.output and "65535" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "s.db").exists()
    res = CliRunner().invoke(app, ["export", "--format", "nosuch", "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "unknown export format 'nosuch' (known: delphi, neuronpedia)" in res.output, \
        res.output
    assert res.output.count("error:") == 1 and "no run" not in res.output
    assert not (tmp_path / "s.db").exists()


def test_a_store_that_is_not_a_database_is_one_line(tmp_path):
    bad = tmp_path / "store.db"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SaexplainError, match="not a saexplain store"):
        Store(bad)
    res = CliRunner().invoke(app, ["report", "--store", str(bad)])
    assert res.exit_code == 2 and "not a saexplain store" in res.output and "Traceback" not in res.output
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    res = CliRunner().invoke(app, ["report", "--store", str(blocked / "store.db")])
    assert res.exit_code == 2 and "store" in res.output and "Traceback" not in res.output
    with pytest.raises(SaexplainError, match="cannot create the store's folder"):
        Store(blocked / "store.db")


def test_a_store_from_schema_4_is_upgraded_with_statuses_and_text_hashes(tmp_path):
    import sqlite3

    from saexplain.store.db import _MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for v in range(4):
        conn.executescript(_MIGRATIONS[v])
    conn.execute("PRAGMA user_version=4")
    conn.execute("INSERT INTO runs (kind, config_hash, config_json, created, updated) VALUES ('run','h','{}',0,0)")
    conn.execute("INSERT INTO explanations (run_id, feature, method, description, created) VALUES (1,0,'a','x',0)")
    conn.execute("INSERT INTO explanations (run_id, feature, method, description, created, error) "
                 "VALUES (1,1,'a','',0,'boom')")
    conn.execute("INSERT INTO scores (explanation_id, scorer, value, created) VALUES (1,'g',0.5,0)")
    conn.execute("INSERT INTO scores (explanation_id, scorer, value, created) VALUES (1,'s',NULL,0)")
    conn.commit()
    conn.close()
    with Store(path) as db:
        e = {r["feature"]: r for r in db.explanations(1)}
        assert e[0]["status"] == "ok" and e[1]["status"] == "failed" and e[0]["text_hash"]
        sc = {s["scorer"]: s for s in db.scores(1)}
        assert sc["g"]["status"] == "ok" and sc["s"]["status"] == "degraded"
        new = db.put_explanation(1, 2, "a", "y", [], {}, {}, [])
        assert new == 3


# ------------------------------------------------------------------------------------------------- start-up
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["run", "--no-such-option"], ["train", "sft", "--help"]])
def test_help_and_argument_errors_load_no_model_library(argv):
    code = ("import sys; from saexplain.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'sae_lens', 'openai', 'jsonschema', "
            "'sentence_transformers') if m in sys.modules)\n"
            "print('HEAVY', heavy, 'CODE', code)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] CODE"), (last, out.stderr[-500:])
    assert last.endswith("CODE 0") == (argv[-1] == "--help")


# ------------------------------------------------------------------------------- identities follow content
def test_speed_settings_change_no_identity_and_content_changes_every_one(cfgs):
    from saexplain.cache.pipeline import cache_key
    from saexplain.subject.config import SubjectConfig

    key, _ = cache_key(cfgs.subject, cfgs.corpus, cfgs.cache)
    fast = SubjectConfig(**{**cfgs.subject.model_dump(), "batch_size": 3, "device": "cpu:0"})
    assert cache_key(fast, cfgs.corpus, cfgs.cache.model_copy(update={"batch_contexts": 7}))[0] == key
    assert cache_key(SubjectConfig(**{**cfgs.subject.model_dump(), "top_k": 5}), cfgs.corpus, cfgs.cache)[0] != key
    assert cfgs.identity(key) == with_run(cfgs, LLMConfig(max_concurrency=9, timeout=3)).identity(key)
    assert cfgs.identity(key) != cfgs.identity("another-cache")


def test_a_changed_corpus_file_starts_a_new_run_instead_of_mixing_old_explanations(cfgs):
    c = with_run(cfgs, explainers="oneshot", scorers="generation", features="0")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    corpus = c.corpus.corpus[0]
    with open(corpus, "a") as f:
        f.write("\n\nA new tale about a wife and her husband, added after the first run.\n")
    h2 = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    assert h2.run_id != h.run_id and h2.cache.key != h.cache.key
    res = CliRunner().invoke(app, ["score", "--run", str(h.run_id), "--store", c.run.store])
    assert res.exit_code == 2 and "made on other data" in res.output  # the old run cannot be re-read silently


def test_a_run_stored_before_a_config_field_existed_is_resumed_not_forked(cfgs):
    c = with_run(cfgs, explainers="oneshot", scorers="generation", features="0")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    with Store(c.run.store) as db:  # as an older saexplain stored it: without sage.seed, under another hash
        stored = json.loads(db.run(h.run_id)["config_json"])
        del stored["sage"]["seed"]
        db.set_run_config(h.run_id, json.dumps(stored))
        db.set_run_hash(h.run_id, "older-identity")
    again = ScriptedBackend(universal)
    h2 = run_all(c, backend=again, **QUIET)
    assert h2.run_id == h.run_id and again.requests == []  # found, nothing redone
    with Store(c.run.store) as db:
        assert db.run(h.run_id)["config_hash"] == c.identity(h2.cache.key)
        stored = json.loads(db.run(h.run_id)["config_json"])
        stored["sage"]["seed"] = 5  # a setting that changes results: another run
        db.set_run_config(h.run_id, json.dumps(stored))
        db.set_run_hash(h.run_id, "older-identity")
    h3 = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    assert h3.run_id != h.run_id


# ---------------------------------------------------------------------------------------- data at rest (cache)
def _cache_dir(cfgs):
    from saexplain.cache.pipeline import cache_key
    from saexplain.paths import home

    return home() / "caches" / cache_key(cfgs.subject, cfgs.corpus, cfgs.cache)[0]


@pytest.mark.parametrize("damage", ["delete", "truncate", "empty", "bitflip", "extra"])
def test_a_damaged_cache_is_one_line_naming_the_file(cfgs, damage):
    c = with_run(cfgs, explainers="oneshot", scorers="generation", features="0")
    c = StageConfigs(**{**c.__dict__, "cache": c.cache.model_copy(update={"shard_contexts": 100})})
    run_all(c, backend=ScriptedBackend(universal), **QUIET)
    folder = _cache_dir(c)
    shards = sorted(folder.glob("shard_*.npz"))
    assert len(shards) >= 3
    victim = shards[1]
    data = victim.read_bytes()
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "bitflip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        victim.write_bytes(bytes(flipped))
    else:
        (folder / "shard_999999990_999999999.npz").write_bytes(data)
        victim = folder / "shard_999999990_999999999.npz"
    with Store(c.run.store) as db:
        db.conn.execute("DELETE FROM features")  # statistics are recomputed from the shards
    args = ["cache", "--model", c.subject.model, "--sae", c.subject.sae, "--corpus", c.corpus.corpus[0],
            "--context", "48", "--tokens", "30000", "--shard-contexts", "100", "--store", c.run.store]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    err = res.output.strip().splitlines()[-1]
    assert err.startswith(f"error: {victim}") and "rebuild" in err and "Traceback" not in res.output


def test_stale_temporaries_are_removed_and_a_second_cache_writer_waits(cfgs):
    import shutil

    from saexplain.cache.latents import LatentCache

    args = [sys.executable, "-m", "saexplain.cli", "cache", "--model", cfgs.subject.model, "--sae",
            cfgs.subject.sae, "--corpus", cfgs.corpus.corpus[0], "--context", "48", "--tokens", "30000",
            "--shard-contexts", "20", "--store", cfgs.run.store]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=os.environ)
    assert first.returncode == 0, first.stderr
    cache = _cache_dir(StageConfigs(**{**cfgs.__dict__, "cache": cfgs.cache.model_copy(
        update={"shard_contexts": 20})}))
    contexts = Path(LatentCache(cache).meta["contexts_path"])
    # what writers killed mid-write leave behind: a temporary corpus folder, a temporary shard
    shutil.rmtree(contexts)
    stale = contexts.with_name(contexts.name + ".tmp999999")
    stale.mkdir()
    (stale / "tokens.npy").write_bytes(b"partial")
    shutil.rmtree(cache)
    cache.mkdir()
    (cache / "shard_000000000_000000020.npz.tmp999999").write_bytes(b"partial")
    from saexplain.locks import exclusive

    with exclusive(cache / ".lock", "the test"):  # another writer holds the cache: the command waits for it
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        for line in proc.stderr:
            if "waiting for another saexplain process" in line:
                break
        else:
            pytest.fail(f"the second writer did not wait: {proc.wait()}")
        assert proc.poll() is None
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not stale.exists() and not list(cache.glob("*.tmp*"))
    done = LatentCache(cache)
    assert done.meta["complete"] and sum(1 for _ in done.shards()) == len(done.meta["shards"])


# ------------------------------------------------------------------------------------------ bad corpus input
def test_bad_corpus_files_are_refused_or_warned_in_one_line(tmp_path, caplog):
    from saexplain.data.corpus import ReadStats, iter_documents

    noise = tmp_path / "noise.txt"
    noise.write_bytes(os.urandom(20_000))
    with pytest.raises(SaexplainError, match=r"noise.txt: .* are not UTF-8 .*refused"):
        list(iter_documents([noise]))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Le café était très animé; à côté, l'église sonnait midi. ".encode("latin-1") * 50)
    with pytest.raises(SaexplainError, match="Latin-1"):
        list(iter_documents([latin]))
    few = tmp_path / "few.txt"
    few.write_bytes(b"plain text " * 500 + b"\xff")
    stats = ReadStats()
    with caplog.at_level("WARNING"):
        list(iter_documents([few], stats=stats))
    assert stats.replaced_bytes == 1 and "1 bytes are not UTF-8" in caplog.text
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("id,score,count\n1,0.5,3\n2,0.7,4\n")
    with pytest.raises(SaexplainError, match=r"numbers.csv: no text column \(columns: id, score, count\)"):
        list(iter_documents([numbers]))
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("Class Index,Title\n3,Fears for pension\n4,Race is on\n")
    assert [d.text for d in iter_documents([mixed])] == ["Fears for pension", "Race is on"]  # no "3 " prefix


def test_features_on_a_missing_or_non_cache_run_is_an_error(cfgs):
    c = with_run(cfgs, explainers="oneshot", scorers="generation", features="0")
    h = run_all(c, backend=ScriptedBackend(universal), **QUIET)
    res = CliRunner().invoke(app, ["features", "--run", "99", "--store", c.run.store])
    assert res.exit_code == 2 and "no run 99" in res.output
    res = CliRunner().invoke(app, ["features", "--run", str(h.run_id), "--store", c.run.store])
    assert res.exit_code == 2 and "not a cache run" in res.output


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_cache_values_equal_the_oracles_whatever_the_saes_bos_setting(tiny_model_dir, tmp_path, prepend_bos):
    from conftest import TEST_DATA, make_saelens_sae
    from saexplain.cache.config import CacheConfig
    from saexplain.cache.pipeline import build_cache
    from saexplain.data.contexts import CorpusConfig
    from saexplain.subject.oracle import Oracle, SubjectConfig

    sae = make_saelens_sae("standard")
    sae.cfg.metadata.prepend_bos = prepend_bos
    sae.save_model(tmp_path / "sae")
    corpus = tmp_path / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[30_000:50_000])
    subject = SubjectConfig(model=str(tiny_model_dir), sae=str(tmp_path / "sae"))
    oracle = Oracle.from_config(subject)
    assert oracle.subject.prepend_bos is prepend_bos
    with Store(tmp_path / "s.db") as db:
        run = build_cache(subject, CorpusConfig(corpus=[str(corpus)], context=24), CacheConfig(tokens=2400),
                          db, oracle=oracle, progress=False)
        stats = {r["feature"]: r for r in db.feature_stats(run.run_id)}
    tokens = np.asarray(run.contexts.tokens)
    bos = oracle.subject.tokenizer.bos_token_id
    assert (tokens[:, 0] == bos).all() == prepend_bos and run.cache.meta["bos"] is prepend_bos
    dense = np.zeros((*tokens.shape, run.cache.d_sae), np.float32)
    for s in run.cache.shards():
        t = s.token_index
        dense[s.start + t // run.cache.context, t % run.cache.context, s.indices.astype(np.int64)] = s.values
    checked = 0
    for c in range(len(tokens)):
        body = tokens[c, 1:] if prepend_bos else tokens[c]
        text = "".join(run.contexts.window(c, 1 if prepend_bos else 0, tokens.shape[1])[0])
        (ids, _), = oracle.subject.tokenize([text])
        if ids[1 if prepend_bos else 0:] != body.tolist():
            continue  # the text does not tokenise back to the same ids (a word cut at the context's start)
        res = oracle.activations([text])[0]
        got = np.zeros((len(body), run.cache.d_sae), np.float32)
        for i in range(len(body)):
            got[i, res.indices[i]] = np.maximum(res.acts[i], 0)
        want = dense[c, 1:] if prepend_bos else dense[c]
        top = np.sort(want, axis=1)[:, -oracle.top_k:]
        np.testing.assert_allclose(np.sort(got, axis=1)[:, -oracle.top_k:], top, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 3
    text_tokens = tokens.size - (len(tokens) if prepend_bos else 0)
    f = max(stats, key=lambda j: stats[j]["n_nonzero"])
    assert stats[f]["frequency"] == pytest.approx(stats[f]["n_nonzero"] / text_tokens)


# ---------------------------------------------------------------------------------------- bad SAE / device input
def _probe(model, sae, *extra):
    return CliRunner().invoke(app, ["probe", "The wife came home.", "--model", str(model), "--sae", str(sae), *extra])


def _one_clear_line(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.count("error:") == 1, res.output
    for w in words:
        assert w in res.output, res.output


def test_sae_checkpoints_and_broken_sae_files_are_loaded_or_refused_in_one_line(tiny_model_dir, tmp_path):
    import shutil

    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TemporalSAE, TemporalSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    from conftest import D_MODEL, D_SAE, make_saelens_sae
    from saexplain.subject.sae import load_sae

    meta = {"hook_name": "blocks.0.hook_resid_post", "prepend_bos": True}
    # checkpoints sae-lens's trainer writes for BatchTopK and Matryoshka-BatchTopK: they run as JumpReLU
    for name, cls, cfg_cls, extra in (
            ("btk", BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {}),
            ("mbtk", MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig,
             {"matryoshka_widths": [32, D_SAE]})):
        training = cls(cfg_cls(d_in=D_MODEL, d_sae=D_SAE, k=8, dtype="float32", device="cpu", **extra))
        training.cfg.metadata.hook_name = meta["hook_name"]
        with torch_no_grad():
            training.topk_threshold.fill_(0.2)
            training.b_enc.normal_(0, 0.5)
        training.save_model(tmp_path / name)
        sae = load_sae(str(tmp_path / name))
        assert sae.cfg.architecture() == "jumprelu" and float(sae.threshold.min()) > 0
        res = _probe(tiny_model_dir, tmp_path / name, "--feature", "3")
        assert res.exit_code == 0, res.output
    temporal = TemporalSAE(TemporalSAEConfig(d_in=D_MODEL, d_sae=D_SAE, n_heads=4, bottleneck_factor=1))
    temporal.save_model(tmp_path / "temporal")
    _one_clear_line(_probe(tiny_model_dir, tmp_path / "temporal"), "temporal SAE")
    good = tmp_path / "good"
    make_saelens_sae("standard").save_model(good)
    for damage in ("cfg-not-json", "truncated", "garbage", "empty"):
        bad = tmp_path / damage
        shutil.copytree(good, bad)
        weights = bad / "sae_weights.safetensors"
        if damage == "cfg-not-json":
            (bad / "cfg.json").write_text("{architecture: standard")
            _one_clear_line(_probe(tiny_model_dir, bad), "cfg.json", "JSON")
            continue
        data = weights.read_bytes()
        weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                             "empty": b""}[damage])
        _one_clear_line(_probe(tiny_model_dir, bad), str(bad), "does not load")


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_a_device_this_machine_lacks_is_one_line(tiny_model_dir, sae_folders):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_clear_line(_probe(tiny_model_dir, sae_folders["topk"], "--device", "cuda"), "no CUDA device", "--device cpu")
    _one_clear_line(_probe(tiny_model_dir, sae_folders["topk"], "--device", "tpu9"), "not a torch device")


def test_probe_shows_abstopk_negative_activations_signed(tiny_model_dir, tmp_path):
    from conftest import make_saelens_sae
    from saexplain.subject.oracle import Oracle, SubjectConfig

    make_saelens_sae("abstopk", k=8).save_model(tmp_path / "abs")
    oracle = Oracle.from_config(SubjectConfig(model=str(tiny_model_dir), sae=str(tmp_path / "abs")))
    (res,) = oracle.activations(["The wife came home."])
    assert (res.acts < 0).any()  # negative activations are among each token's strongest, signed
    feats = sorted({int(j) for row, v in zip(res.indices, res.acts) for j, x in zip(row, v) if x < 0})[:2]
    out = _probe(tiny_model_dir, tmp_path / "abs", *sum((["--feature", str(f)] for f in feats), []))
    assert out.exit_code == 0, out.output
    assert any(cell.strip().startswith("-") for line in out.output.splitlines() for cell in line.split("│"))


# ------------------------------------------------------------------------------------------ killed mid-run
def test_a_run_killed_with_sigkill_resumes_to_what_an_uninterrupted_run_stores(cfgs, tmp_path):
    """`saexplain run` in its own process against the fake server process, 16 features in flight, SIGKILLed at
    3 moments; the rerun stores exactly one row per item, equal to an uninterrupted run's (the fake server's
    replies are a function of the request)."""
    import signal

    port = free_port()

    def args(store):
        return [sys.executable, "-m", "saexplain.cli", "run", "--features", ",".join(map(str, range(16))),
                "--run-concurrency", "16", "--explainers", "oneshot,sage",
                "--scorers", "generation,detection", "--store", str(store), "--model", cfgs.subject.model,
                "--sae", cfgs.subject.sae, "--corpus", cfgs.corpus.corpus[0], "--context", "48",
                "--tokens", "30000", "--window", "16", "--sage-selection", "none",
                "--llm", f"openai-compatible:http://127.0.0.1:{port}/v1#fake"]

    def rows(store):
        with Store(store) as db:
            (run,) = db.runs("run")
            exps = db.explanations(run["id"])
            scores = db.scores(run["id"])
            n = db.conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
            m = db.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        assert n == len(exps) and m == len(scores)  # nothing orphaned or duplicated
        return (sorted((e["feature"], e["method"], e["status"], e["description"], json.dumps(e["labels"]))
                       for e in exps),
                sorted((s["feature"], s["method"], s["scorer"], s["status"], s["value"]) for s in scores))

    with FaultServerProcess("universal", port=port) as server:
        whole = subprocess.run(args(tmp_path / "whole.db"), capture_output=True, text=True, timeout=300)
        assert whole.returncode in (0, 1), whole.stderr  # 1: some items of random features fail (as they must)
        total = server.requests
        killed = tmp_path / "killed.db"
        kills = 0
        for fraction in (0.2, 0.5, 0.8):
            start = server.requests
            proc = subprocess.Popen(args(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and server.requests - start < fraction * total:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
        assert kills >= 2  # killed mid-run (a later start may finish first: its earlier replies are cached)
        resumed = subprocess.run(args(killed), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == whole.returncode, resumed.stderr
    assert rows(killed) == rows(tmp_path / "whole.db")
    exps, scores = rows(killed)
    assert len(exps) == 32 and len(scores) == 2 * sum(e[2] == "ok" for e in exps) >= 8


# ------------------------------------------------------------------------------------ concurrent pipeline
def test_a_run_at_concurrency_16_stores_what_a_run_at_concurrency_1_stores(cfgs, tmp_path):
    from saexplain.score.simulation import SimulationConfig

    stored = {}
    for n in (1, 16):
        c = with_run(cfgs, LLMConfig(max_concurrency=n), features="0,1,2,3,4,5", run_concurrency=n,
                     scorers="detection,generation,simulation,embedding", store=str(tmp_path / f"c{n}.db"))
        c = StageConfigs(**{**c.__dict__, "simulation": SimulationConfig(logprobs=False)})
        backend = ScriptedBackend(universal)
        run_all(c, backend=backend, **QUIET)  # the scripted LLM fails some items: failures must match too
        stored[n] = stored_results(c.run.store)
    assert stored[1] == stored[16]
    exps, scores = stored[1]
    assert len(exps) == 12 and len(scores) == 4 * sum(e[2] == "ok" for e in exps) >= 40


def test_the_oracle_batches_concurrent_callers_and_each_gets_its_solo_result(ground_truth):
    from saexplain.subject.oracle import Oracle, SubjectConfig

    oracle = Oracle.from_config(SubjectConfig(model=str(ground_truth["model"]), sae=str(ground_truth["sae"])))
    asks = [(["His wife came home.", "The river ran."], [0]), (["The wife and the husband."], [1, 0]),
            (["A wife sang at dawn.", "His wife came home."], [0, 1, 5]), (["Nothing here."], None),
            (["The old king spoke."], [7])]
    solo = [oracle.activations(t, f) for t, f in asks]

    async def together():
        return await asyncio.gather(*(oracle.aactivations(t, f) for t, f in asks))

    oracle.forwards.clear()
    batched = asyncio.run(together())
    assert len(oracle.forwards) == 2  # one forward for the feature requests, one for the top-k request
    for a, b in zip(solo, batched):
        for ra, rb in zip(a, b):
            assert ra.tokens == rb.tokens and ra.features == rb.features
            np.testing.assert_allclose(rb.acts, ra.acts, rtol=1e-5, atol=1e-6)
            if ra.indices is not None:
                assert (ra.indices == rb.indices).all()

    async def one_bad():
        return await asyncio.gather(oracle.aactivations(["fine"], [0]), oracle.aactivations(["x"], [10 ** 6]),
                                    return_exceptions=True)

    good, bad = asyncio.run(one_bad())
    assert isinstance(bad, SaexplainError) and good[0].features == [0]


def test_sages_time_budget_counts_its_own_time_not_waits_for_slots_held_by_other_features(wife):
    class Slow(ScriptedBackend):
        async def complete(self, request, timeout):
            await asyncio.sleep(0.1)
            return await super().complete(request, timeout)

    script = Script()
    backend = Slow(lambda r: script(r) if r.messages else "busy")
    llm = LLM(LLMConfig(max_concurrency=1, retries=0, cache=False), backend=backend)
    record = make_record(wife, ["His wife came home.", "The wife and the husband.", "A wife sang."])

    async def both():
        hog = [llm.generate(prompt=f"another feature's request {i}", feature=99) for i in range(30)]
        sage = SAGE(SAGEConfig(selection="none", max_seconds=1.5, max_llm_calls=20)).explain(record, llm, wife)
        return await asyncio.gather(sage, *hog)

    exp, *_ = asyncio.run(both())
    assert exp.usage["queued"] > 1.5  # it waited longer than its whole budget behind the other requests
    assert exp.evidence["stop_reason"] == "all hypotheses decided"


def test_sages_design_calls_of_a_round_run_together_against_a_server(wife):
    class Tracking(ScriptedBackend):
        local = False

        def __init__(self, handler):
            super().__init__(handler)
            self.in_flight = self.most = 0

        async def complete(self, request, timeout):
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.05)
            try:
                return await super().complete(request, timeout)
            finally:
                self.in_flight -= 1

    class OneSlot(Tracking):
        local = True  # an in-process LLM: one call after the other

    record = make_record(wife, ["His wife came home.", "The wife and the husband.", "A wife sang."])
    out = {}
    for cls in (Tracking, OneSlot):
        backend = cls(Script())
        llm = LLM(LLMConfig(max_concurrency=8, retries=0, cache=False), backend=backend)
        exp = asyncio.run(SAGE(SAGEConfig(selection="none")).explain(record, llm, wife))
        out[cls.local] = (exp, backend.most)
    (server, most), (alone, one) = out[False], out[True]
    assert most >= 3 and one == 1  # the round's hypotheses were designed at once
    assert server.description == alone.description and server.evidence["hypotheses"] == alone.evidence["hypotheses"]


def test_a_metered_block_closed_in_another_context_leaves_that_contexts_meters_alone():
    """A killed run's coroutine closed by the garbage collector exits its metered() block in whatever context
    is current: it must not switch off the meters of the task that happens to run then."""
    import contextvars

    from saexplain.llm import metered
    from saexplain.llm.client import _METERS

    async def hold():
        with metered():
            await asyncio.sleep(0)

    coro = hold()
    contextvars.copy_context().run(coro.send, None)  # inside metered(), suspended, in another context
    with metered() as mine:
        coro.close()  # what the garbage collector does
        assert _METERS.get() and _METERS.get()[-1] is mine
