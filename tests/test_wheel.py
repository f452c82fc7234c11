"""The wheel works outside the repository (slow: a wheel build, a fresh venv, Gemma's conversion): built with
`python -m build`, installed with its `web` extra into a new venv in another folder, then — from a folder that
is not the checkout, with an empty $SAEXPLAIN_HOME — `saexplain probe` on the default stack (the shipped SAE
installs itself, Gemma converts), `saexplain run` without --corpus (the shipped corpus) against the fake
OpenAI-compatible server process, and `saexplain serve` answering with that run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from saexplain.net import free_port
from saexplain.testing.fake_server import FaultServerProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _sh(args: list[str], cwd: Path, env: dict, timeout: float) -> str:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, args))}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SAEXPLAIN_", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    dist = tmp_path / "dist"
    _sh([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], tmp_path, env, 900)
    wheel = next(dist.glob("saexplain-*.whl"))
    venv = tmp_path / "elsewhere" / "venv"
    _sh([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 300)
    _sh([str(venv / "bin/python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
         f"{wheel}[web]"], tmp_path, env, 1800)
    cli = str(venv / "bin/saexplain")
    work = tmp_path / "elsewhere" / "work"
    work.mkdir()
    env.update(SAEXPLAIN_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    # the package's default corpus and SAE are package data, read from the install, not from this checkout
    python = str(venv / "bin/python")
    where = _sh([python, "-c", "import saexplain.data.corpus as c; print(c.default_corpus())"], work, env, 120)
    assert str(venv) in where and str(ROOT) not in where

    out = _sh([cli, "probe", "Once upon a time there lived a king", "-f", "0", "-f", "1"], work, env, 900)
    assert "king" in out

    store = work / "store.db"
    with FaultServerProcess("universal", port=free_port()) as server:
        out = _sh([cli, "run", "--features", "random:2", "--explainers", "oneshot", "--scorers", "detection",
                   "--tokens", "16384", "--llm", f"openai-compatible:{server.url}#fake",
                   "--store", str(store)], work, env, 1800)
    assert "report" in out
    port = free_port()
    serve = subprocess.Popen([cli, "serve", "--store", str(store), "--port", str(port), "--no-probe"],
                             cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        runs = None
        deadline = time.time() + 120
        while time.time() < deadline and runs is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as r:
                    runs = json.loads(r.read())
            except OSError:
                assert serve.poll() is None, serve.stdout.read()
                time.sleep(0.5)
        assert runs and runs[-1]["explainers"] == ["oneshot"], runs
        assert runs[-1]["scorers"] == ["detection"], runs
        run_id = runs[-1]["id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs/{run_id}", timeout=30) as r:
            assert r.status == 200 and "oneshot" in r.read().decode()
    finally:
        serve.terminate()
        serve.wait(timeout=30)
