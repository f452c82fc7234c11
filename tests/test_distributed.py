"""Scale-out on a real local Ray (`num_cpus=2`) with the tiny model + ground-truth SAE and the fake
OpenAI-compatible server process (canned replies that are a function of the request — named as a fake; it tests
the bookkeeping, not explanation quality): a cache written by Ray workers is the local cache byte for byte; a run
on 2 workers stores exactly what the local run stores; a worker killed mid-run or a driver killed mid-run loses
nothing and duplicates nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import stored_results, with_run
from saexplain.cache.config import CacheConfig
from saexplain.cache.latents import LatentCache, shard_ranges
from saexplain.cache.pipeline import build_cache
from saexplain.distributed import RayConfig, RaySession
from saexplain.llm import LLMConfig
from saexplain.net import free_port
from saexplain.pipeline.runner import run_all
from saexplain.store import Store
from saexplain.testing.fake_server import FaultServerProcess

QUIET = {"echo": lambda m: None}
RAY2 = RayConfig(ray="local", ray_num_cpus=2, ray_workers=2)


def _manifest(cache: LatentCache) -> list[tuple]:
    return [(e["name"], e["start"], e["end"], e["bytes"], e["sha256"]) for e in cache.meta["shards"]]


def test_a_cache_written_by_ray_workers_is_the_local_cache_byte_for_byte(cfgs, tmp_path, monkeypatch):
    cache_cfg = CacheConfig(tokens=30_000, shard_contexts=64)
    monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path / "home-local"))
    with Store(tmp_path / "local.db") as db:
        local = build_cache(cfgs.subject, cfgs.corpus, cache_cfg, db, progress=False)
        local_stats = db.feature_stats(local.run_id)
    monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path / "home-ray"))
    with Store(tmp_path / "ray.db") as db, RaySession(RAY2, **QUIET) as ray:
        workers = ray.cache_workers(cfgs.subject)
        remote = build_cache(cfgs.subject, cfgs.corpus, cache_cfg, db, progress=False, workers=workers)
        assert len(workers.workers.served) == 2
        ray_stats = db.feature_stats(remote.run_id)
        assert remote.key == local.key  # the same cache identity
        assert len(_manifest(remote.cache)) == len(shard_ranges(remote.cache.n_contexts, 64)) >= 9
        assert _manifest(remote.cache) == _manifest(local.cache)  # same files, same sha256
        assert ray_stats == local_stats  # statistics and top tokens (decoded on a worker)

        # resume per range: a build killed with holes anywhere writes only the ranges without a file
        path = remote.cache.path
        meta = json.loads((path / "meta.json").read_text())
        meta["complete"] = False
        del meta["shards"]
        (path / "meta.json").write_text(json.dumps(meta))
        gone = [remote.cache.shard_paths()[i] for i in (1, 4, 7)]
        kept = {p.name: p.stat().st_mtime_ns for p in remote.cache.shard_paths() if p not in gone}
        for p in gone:
            p.unlink()
        db.conn.execute("DELETE FROM features")
        db.conn.commit()
        again = build_cache(cfgs.subject, cfgs.corpus, cache_cfg, db, progress=False, workers=workers)
        assert _manifest(again.cache) == _manifest(local.cache)
        assert {p.name: p.stat().st_mtime_ns for p in again.cache.shard_paths() if p.name in kept} == kept


def _server_cfgs(cfgs, url: str, store, **run):
    return with_run(cfgs, LLMConfig(llm=f"openai-compatible:{url}#fake", max_concurrency=4),
                    features="0,1,2,3,4,5", explainers="oneshot,sage", scorers="detection,generation",
                    store=str(store), **run)


def test_a_run_on_two_ray_workers_stores_what_the_local_run_stores(cfgs, tmp_path):
    with FaultServerProcess("universal", port=free_port()) as server:
        local = _server_cfgs(cfgs, server.url, tmp_path / "local.db")
        run_all(local, **QUIET)  # (some items of the fake LLM's replies fail, as they must: failures match too)
        remote = _server_cfgs(cfgs, server.url, tmp_path / "ray.db")
        with RaySession(RAY2, **QUIET) as ray:
            h = run_all(remote, ray=ray, **QUIET)
            served = ray.run_executor.workers.served
        assert len(served) == 2 and min(served.values()) >= 6  # both workers did a share
    assert stored_results(remote.run.store) == stored_results(local.run.store)
    exps, scores = stored_results(remote.run.store)
    assert len(exps) == 12 and len(scores) == 2 * sum(e[2] == "ok" for e in exps) >= 8
    with Store(remote.run.store) as db:  # the workers' LLM call logs were written by the driver
        calls = db.conn.execute("SELECT COUNT(*), COUNT(DISTINCT feature) FROM llm_calls WHERE run_id=?",
                                (h.run_id,)).fetchone()
    assert calls[0] > 12 and calls[1] == 6


def test_a_ray_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(cfgs, tmp_path):
    import ray as ray_module

    with FaultServerProcess("universal", port=free_port(), delay=0.05) as server:
        local = _server_cfgs(cfgs, server.url, tmp_path / "local.db")
        run_all(local, **QUIET)
        total = server.requests
        remote = _server_cfgs(cfgs, server.url, tmp_path / "ray.db", run_concurrency=4)
        with RaySession(RAY2, **QUIET) as session:
            outcome: dict = {}

            def go():
                try:
                    outcome["h"] = run_all(remote, ray=session, **QUIET)
                except BaseException as e:  # noqa: BLE001
                    outcome["error"] = e

            t = threading.Thread(target=go)
            t.start()
            deadline = time.time() + 120
            while (session.run_executor is None or server.requests - total < 0.3 * total) and time.time() < deadline:
                time.sleep(0.02)
            workers = session.run_executor.workers
            ray_module.kill(workers.actors[min(workers.actors)])
            t.join(timeout=300)
            assert "error" not in outcome, outcome.get("error")
            assert len(workers.died) == 1 and workers._next == 3  # the dead one was replaced …
            assert workers.served.get(2, 0) > 0  # … and its replacement did work
    assert stored_results(remote.run.store) == stored_results(local.run.store)
    with Store(remote.run.store) as db:
        n = db.conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
    assert n == 12  # one row per (feature, method): nothing duplicated


def test_a_driver_killed_mid_run_resumes_on_ray_to_what_an_uninterrupted_run_stores(cfgs, tmp_path):
    def args(url, store):
        return [sys.executable, "-m", "saexplain.cli", "run", "--ray", "--ray-num-cpus", "2", "--ray-workers", "2",
                "--features", "0,1,2,3,4,5", "--explainers", "oneshot,sage", "--scorers", "generation,detection",
                "--store", str(store), "--model", cfgs.subject.model, "--sae", cfgs.subject.sae,
                "--corpus", cfgs.corpus.corpus[0], "--context", "48", "--tokens", "30000", "--window", "16",
                "--sage-selection", "none", "--llm", f"openai-compatible:{url}#fake", "--max-concurrency", "4"]

    with FaultServerProcess("universal", port=free_port(), delay=0.05) as server:
        local = _server_cfgs(cfgs, server.url, tmp_path / "local.db")
        run_all(local, **QUIET)
        total = server.requests
        killed = tmp_path / "killed.db"
        proc = subprocess.Popen(args(server.url, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = server.requests
        while proc.poll() is None and server.requests - start < 0.5 * total:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        with Store(killed) as db:
            partial = db.conn.execute("SELECT COUNT(*) FROM explanations WHERE status='ok'").fetchone()[0]
        resumed = subprocess.run(args(server.url, killed), capture_output=True, text=True, timeout=300,
                                 check=False)
        assert resumed.returncode in (0, 1), resumed.stderr
        assert "ray: 2 run worker(s)" in resumed.stdout
        assert "LLM requests in flight ≤ 4 per worker" in resumed.stdout  # the workers' clients' cap
    assert 0 < partial
    assert stored_results(str(killed)) == stored_results(local.run.store)


def test_ray_option_addresses_and_per_node_endpoints():
    from typer.testing import CliRunner

    from saexplain.cli import app, optional_ray_address
    from saexplain.distributed.run import llm_for_node
    from saexplain.errors import ConfigError

    assert optional_ray_address(["cache", "--ray", "--tokens", "1k"]) == ["cache", "--ray", "local", "--tokens", "1k"]
    assert optional_ray_address(["run", "--ray"]) == ["run", "--ray", "local"]
    assert optional_ray_address(["run", "--ray", "auto"]) == ["run", "--ray", "auto"]
    assert optional_ray_address(["run", "--ray", "ray://h:10001"]) == ["run", "--ray", "ray://h:10001"]

    run_llm = {"llm": "openai-compatible:http://10.0.0.1:8000/v1#Qwen", "max_concurrency": 8}
    nodes = {"10.0.0.2": {"llm": "openai-compatible:http://10.0.0.2:8000/v1#Qwen", "max_concurrency": 16},
             "*": {"llm": "openai-compatible:http://10.0.0.9:8000/v1#Qwen"}}
    assert llm_for_node(run_llm, nodes, "10.0.0.2", "gpu2") == {**nodes["10.0.0.2"]}
    assert llm_for_node(run_llm, nodes, "10.0.0.3", "gpu3")["llm"].startswith("openai-compatible:http://10.0.0.9")
    assert llm_for_node(run_llm, {}, "10.0.0.3", "gpu3") == run_llm
    with pytest.raises(ConfigError, match="another model"):
        llm_for_node(run_llm, {"10.0.0.2": {"llm": "openai-compatible:http://10.0.0.2:8000/v1#Llama"}},
                     "10.0.0.2", "gpu2")

    out = CliRunner().invoke(app, ["cache", "--ray", "auto", "--tokens", "1k"])  # no cluster on this machine
    assert out.exit_code == 2 and "no Ray cluster there" in out.output
