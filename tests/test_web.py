"""The web UI (`saexplain serve`) and the exports, on a store made by a tiny-model run (ScriptedLLM: canned
replies, named as such): the JSON API and the pages through FastAPI's test client; then a real `saexplain serve`
process driven by Playwright in Debian's Chromium (no browser download): runs page, feature page with hover
values, live probe, search, a SAGE trace, and markup in corpus text or LLM output never executing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import TEST_DATA, tiny_configs
from saexplain.export import export_files
from saexplain.pipeline.runner import run_all
from saexplain.store import Store
from saexplain.testing.scripted import ScriptedBackend, universal
from saexplain.train.data import references_from_neuronpedia
from saexplain.web.app import create_app

XSS = '<script>window.__xss = 1</script>"><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def site(ground_truth, tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    corpus = root / "tales.txt"
    tales = (TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:100_000]
    corpus.write_text("\n\n".join(f"The fisherman's wife said {XSS} to him." for _ in range(12)) + "\n\n" + tales)
    home = tmp_path_factory.getbasetemp() / "saexplain_home"  # the home conftest gives every fast test
    mp = pytest.MonkeyPatch()
    mp.setenv("SAEXPLAIN_HOME", str(home))
    cfgs = tiny_configs(ground_truth, corpus, tokens=20_000, sage="measured", explainers="oneshot,sage",
                        scorers="detection,generation", store=str(root / "store.db"))
    h = run_all(cfgs, echo=lambda m: None, backend=ScriptedBackend(universal))
    with Store(cfgs.run.store) as db:  # an explanation as an LLM could write it: markup must stay text
        db.put_explanation(h.run_id, 1, "handwritten", f"fires on {XSS}", [XSS], {}, {}, [
            {"kind": "probe", "content": {"hypothesis": 1, "probe": XSS, "expected": "high", "measured": 0.0,
                                          "relative": 0.0, "consistent": False, "tokens": [XSS], "acts": [0.0]}}])
    yield {"store": Path(cfgs.run.store), "run": h.run_id, "home": home, "cfgs": cfgs}
    mp.undo()


@pytest.fixture(scope="module")
def client(site):
    with TestClient(create_app(site["store"])) as c:
        yield c


def test_api_runs_run_and_feature_pages(client, site):
    runs = client.get("/api/runs").json()
    assert [r["id"] for r in runs] == [site["run"]]
    r = runs[0]
    assert r["explanations"] == {"ok": 5, "degraded": 0, "failed": 0} and r["scores"]["ok"] == 8
    assert r["cost_usd"] is None  # the scripted backend has no price: unknown, never $0
    run = client.get(f"/api/runs/{site['run']}").json()
    cell = next(c for c in run["table"] if c["method"] == "oneshot" and c["scorer"] == "generation")
    assert cell["n"] == 2 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    page = client.get(f"/api/runs/{site['run']}/features/0").json()
    assert page["max_act"] > 0 and sum(page["histogram"]["counts"]) == page["n_nonzero"]
    assert {e["method"] for e in page["explanations"]} == {"oneshot", "sage"}
    chips = {s["scorer"]: s for e in page["explanations"] if e["method"] == "oneshot" for s in e["scores"]}
    assert chips["generation"]["value"] == 1.0 and chips["generation"]["run_n"] == 2
    pools = {g["pool"] for g in page["examples"]}
    assert pools == {"explain", "score"}
    top = next(g for g in page["examples"] if g["pool"] == "explain" and g["title"] == "Top activations")
    # the page's activations are the cache's: the feature fires on "wife" at its max
    for w in top["windows"]:
        peak = w["acts"].index(max(w["acts"]))
        assert w["tokens"][peak].strip() == "wife" and max(w["acts"]) == pytest.approx(page["max_act"], abs=1e-4)
    explain_ctx = {w["context"] for g in page["examples"] if g["pool"] == "explain" for w in g["windows"]}
    score_ctx = {w["context"] for g in page["examples"] if g["pool"] == "score" for w in g["windows"]}
    assert not explain_ctx & score_ctx
    # the per-SAE page shows the same feature with every run's explanations
    sae = client.get(f"/api/saes/{r['cache_run']}/features/0").json()
    assert sae["run_id"] is None and {e["method"] for e in sae["explanations"]} == {"oneshot", "sage"}


def test_sorting_search_and_jump(client, site):
    rows = client.get(f"/api/runs/{site['run']}/features", params={"sort": "density"}).json()
    assert [r["density"] for r in rows] == sorted((r["density"] for r in rows), reverse=True)
    rows = client.get(f"/api/runs/{site['run']}/features", params={"sort": "disagreement",
                                                                   "scorer": "generation"}).json()
    assert {r["feature"] for r in rows} == {0, 1}
    assert client.get(f"/api/runs/{site['run']}/features", params={"sort": "nope"}).status_code == 400
    hits = client.get("/api/search", params={"q": "wif"}).json()  # prefix match
    assert {(h["feature"], h["method"]) for h in hits} >= {(0, "oneshot"), (0, "sage")}
    assert all("wife" in h["description"] for h in hits)
    assert all([t for t, m in h["snippet"] if m] == ["wife"] for h in hits)  # the matched word, marked
    assert [(h["feature"], h["method"]) for h in client.get("/api/search", params={"q": "fires"}).json()] == \
        [(1, "handwritten")]
    assert client.get("/api/search", params={"q": "zzzz"}).json() == []
    r = client.get("/search", params={"q": "1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{site['run']}/features/1"


def test_trace_events_are_structured(client, site):
    t = client.get(f"/api/runs/{site['run']}/features/0/traces/sage").json()
    kinds = [e["kind"] for e in t["events"]]
    for k in ("exemplars", "hypotheses", "probe", "verdict", "stop", "conclusion"):
        assert k in kinds
    assert kinds.index("hypotheses") < kinds.index("probe") < kinds.index("verdict") < kinds.index("conclusion")
    probe = next(e for e in t["events"] if e["kind"] == "probe")["data"]
    assert len(probe["tokens"]) == len(probe["acts"]) and probe["text"]  # the hypothesis it tests, by text
    html = client.get(f"/runs/{site['run']}/features/0").text
    assert "Verdict on H1" in html and "Conclusion" in html
    # the measured selection: every candidate with what was measured for it
    sel = next(e for e in t["events"] if e["kind"] == "selection")["data"]
    assert sel["chosen"] in sel["scores"] and all({"fire", "breadth", "covered"} <= set(v)
                                                   for v in sel["scores"].values())
    assert "Selection among candidates" in html and "breadth" in html
    # SAGE's measured tools: corpus counts (explain half), its searches, the output side
    assert {"corpus_evidence", "output_side", "evidence_candidates"} <= set(kinds)
    assert "Counted in real text" in html and "Output side" in html and "Candidates from the counted evidence" in html


def test_markup_is_escaped_everywhere(client, site):
    page = client.get(f"/api/runs/{site['run']}/features/1").json()
    assert any(e["description"].startswith("fires on <script>") for e in page["explanations"])
    f0 = client.get(f"/api/runs/{site['run']}/features/0").json()
    assert any("<" in t for g in f0["examples"] for w in g["windows"] for t in w["tokens"]), \
        "the corpus's markup line should be among feature 0's windows"
    for url in [f"/runs/{site['run']}/features/1", f"/runs/{site['run']}/features/0", f"/runs/{site['run']}",
                "/search?q=fires", "/"]:
        html = client.get(url).text
        assert "<script>window" not in html and "<img src=x" not in html, url
    assert "&lt;script&gt;window.__xss" in client.get(f"/runs/{site['run']}/features/1").text
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp


def test_probe_limits_and_read_only(client, site):
    r = client.post(f"/api/runs/{site['run']}/probe", json={"text": "His wife came home.", "feature": 0})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["tokens"][got["acts"].index(max(got["acts"]))].strip() == "wife" and got["max_act"] > 0
    ff = client.post(f"/api/runs/{site['run']}/probe-features", json={"text": "His wife came home."}).json()
    assert any(f == 0 for f, _, _ in ff["top"])
    assert client.post(f"/api/runs/{site['run']}/probe", json={"text": "x" * 5000, "feature": 0}).status_code == 422
    before = site["store"].stat().st_mtime_ns, site["store"].stat().st_size
    for _ in range(3):
        client.get(f"/runs/{site['run']}/features/0")
    assert (site["store"].stat().st_mtime_ns, site["store"].stat().st_size) == before
    # no path from a request reaches the filesystem
    assert client.get("/static/../../store.db").status_code == 404
    assert client.get("/runs/..%2F..%2Fetc/features/0").status_code in (404, 422)
    assert client.get("/api/runs/abc/features/0").status_code == 422  # ids are integers, nothing else


def test_rate_limit(site):
    with TestClient(create_app(site["store"])) as c:
        codes = [c.post(f"/api/runs/{site['run']}/probe", json={"text": "wife", "feature": 0}).status_code
                 for _ in range(25)]
    assert codes[:20] == [200] * 20 and 429 in codes[20:]


def test_pages_work_without_model_or_cache(site, tmp_path):
    moved = tmp_path / "store.db"  # a store copied to a laptop: no model, no cache
    shutil.copy(site["store"], moved)
    with Store(site["store"], readonly=True) as db:
        cache_dir = site["home"] / "caches" / json.loads(db.run(site["run"])["config_json"])["cache_key"]
    assert cache_dir.is_dir()
    hidden = cache_dir.with_name(cache_dir.name + ".away")
    cache_dir.rename(hidden)
    try:
        with Store(moved) as db:
            cfg = json.loads(db.run(site["run"])["config_json"])
            cfg["subject"]["model"] = str(tmp_path / "no-model-here")
            db.set_run_config(site["run"], json.dumps(cfg))
        with TestClient(create_app(moved)) as c:
            html = c.get(f"/runs/{site['run']}/features/0")
            assert html.status_code == 200 and "is not on this machine" in html.text
            r = c.post(f"/api/runs/{site['run']}/probe", json={"text": "his wife", "feature": 0})
            assert r.status_code == 503 and "cannot be loaded" in r.json()["detail"]
            assert c.get(f"/api/runs/{site['run']}/features/0/lens").status_code == 503
    finally:
        hidden.rename(cache_dir)


def test_neuronpedia_export_round_trips_and_delphi_layout(site, tmp_path):
    with Store(site["store"], readonly=True) as db:
        files = export_files(db, site["run"], "neuronpedia")
        delphi = export_files(db, site["run"], "delphi")
        ok = {(e["feature"], e["method"]): e["description"] for e in db.explanations(site["run"])}
    (name, data), = files.items()
    rows = json.loads(data)
    assert {"modelId", "layer", "index", "description", "typeName", "explanationModelName", "scores"} <= set(rows[0])
    assert all(isinstance(r["index"], str) for r in rows)
    path = tmp_path / name
    path.write_bytes(data)
    sage_only = [r for r in rows if r["typeName"] == "saexplain-sage"]
    path.write_text(json.dumps(sage_only))
    assert references_from_neuronpedia(path, [0, 1]) == {f: ok[(f, "sage")] for f in (0, 1)}
    score = rows[0]["scores"][0]
    assert json.loads(score["jsonDetails"]) is not None and score["explanationScoreTypeName"].startswith("saexplain-")
    hook = "blocks.0.hook_resid_pre"  # the SAE's own hookpoint (sae-lens cfg.json metadata)
    assert json.loads(delphi[f"oneshot/explanations/{hook}_latent0.txt"]) == ok[(0, "oneshot")]
    det = json.loads(delphi[f"oneshot/scores/detection/{hook}_latent0.txt"])
    assert {"str_tokens", "activations", "distance", "activating", "prediction", "probability", "correct"} <= set(det[0])


def test_export_cli(site, tmp_path):
    out = tmp_path / "np"
    r = subprocess.run([sys.executable, "-m", "saexplain.cli", "export", "--store", str(site["store"]),
                        "--run", str(site["run"]), "--format", "neuronpedia", "--out", str(out)],
                       capture_output=True, text=True, env=os.environ, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(next(out.iterdir()).read_text())[0]["index"] in ("0", "1")
    r = subprocess.run([sys.executable, "-m", "saexplain.cli", "export", "--store", str(site["store"]),
                        "--format", "csv"], capture_output=True, text=True, env=os.environ, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "known: delphi, neuronpedia" in r.stderr


# -------------------------------------------------------------------------------------- real browser
@pytest.fixture(scope="module")
def server(site):
    from saexplain.web.launch import ServerProcess

    with ServerProcess(site["store"]) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def browser(site):  # after the site: Playwright's sync API keeps an event loop running in this thread
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install -y chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    dialogs = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    yield pg
    ctx.close()


def test_browser_runs_feature_hover_probe_search_trace(page, server, site):
    page.goto(server + "/")
    page.click(f"text=run {site['run']}")
    page.wait_for_url(f"**/runs/{site['run']}")
    assert page.locator("tr.feature-row").count() == 2  # features 0 and 1
    page.click("tr.feature-row[data-feature='0'] a")
    page.wait_for_url("**/features/0")
    tok = page.locator(".example .tok.on").first
    tok.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert tip.inner_text().endswith(tok.get_attribute("data-act")) and float(tok.get_attribute("data-act")) > 0
    chip = page.locator(".chip.score").first
    chip.hover()
    assert "over the run: mean" in tip.inner_text()
    # live probe: the oracle's activations for the typed sentence
    page.fill("#probe-form textarea", "His wife came home.")
    page.click("#probe-form button")
    page.locator("#probe-out .tok.on").first.wait_for()
    assert page.locator("#probe-out .tok.on").first.inner_text().strip() == "wife"
    # logit lens drawn from the decoder direction
    page.locator("#lens .lens-row").first.wait_for()
    assert page.locator("#lens .lens-bar.pos").count() == 10
    # the SAGE trace: probes shaded, verdicts, conclusion
    page.click(f"a[href='#trace-{site['run']}-sage']")
    trace = page.locator(f"#trace-{site['run']}-sage")
    assert trace.locator(".ev.probe").count() >= 2 and trace.locator(".ev.conclusion").count() == 1
    # search, then follow a hit
    page.fill("header input[name=q]", "wife")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**/search?q=wife")
    page.locator("li.hit a").first.click()
    page.wait_for_url("**/features/0")
    assert page.dialogs == []


def test_browser_markup_never_executes(page, server, site):
    for url in (f"/runs/{site['run']}/features/1", f"/runs/{site['run']}/features/0", f"/runs/{site['run']}",
                "/search?q=fires"):
        page.goto(server + url)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss") is None, url
        assert page.locator("img[src=x]").count() == 0, url
    page.goto(server + f"/runs/{site['run']}/features/1")
    assert any("<script>window.__xss = 1</script>" in t for t in page.locator(".explanation .description").all_inner_texts())
    # typed markup in the probe box is shown as text too
    page.fill("#probe-form textarea", XSS)
    page.click("#probe-form button")
    page.locator("#probe-out .tok").first.wait_for()
    assert page.evaluate("window.__xss") is None and page.locator("img[src=x]").count() == 0
    page.goto(server + f"/runs/{site['run']}/probe")
    page.fill("#features-form textarea", "His wife came home.")
    page.click("#features-form button")
    page.locator("#features-out a.chip").first.wait_for()
    assert page.dialogs == []


def test_browser_run_page_reloads_as_results_arrive(page, server, site):
    """While a run is being written, its page shows each newly stored result without the user reloading."""
    with Store(site["store"]) as db:
        db.set_run_status(site["run"], "running")
    try:
        page.goto(server + f"/runs/{site['run']}")
        live = page.locator("#live")
        assert live.count() == 1
        before = live.get_attribute("data-counts")
        with Store(site["store"]) as db:  # a result stored by the (imagined) running process
            db.put_explanation(site["run"], 0, "late", "stored while the page was open", [], {}, {}, [])
        page.locator("text=stored while the page was open").wait_for(timeout=20_000)  # no reload by hand
        assert page.locator("#live").get_attribute("data-counts") != before
        # the run's summary (cached per run by the server) was recomputed: the new method has its row
        assert page.locator("table.scores td", has_text="late").count() == 1
    finally:
        with Store(site["store"]) as db:
            db.conn.execute("DELETE FROM explanations WHERE method='late'")
            db.set_run_status(site["run"], "complete")
