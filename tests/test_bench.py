"""The maintained benchmarks stay runnable: `python -m bench` lists them, each answers `--help`, and each
prints its figures from its committed raw file (`--report`), so no figure on the results page loses the command
that prints it. Run as a user would, in a subprocess from the repository root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import contextlib, io, json, sys
from bench.__main__ import benchmarks, main
out = {}
for name in benchmarks():
    for mode in ("--help", "--report"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                code = main([name, mode])
            except SystemExit as e:
                code = e.code
        out[f"{name} {mode}"] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_every_benchmark_answers_help_and_reports_from_its_committed_raw_file():
    listed = _bench("-m", "bench")
    assert listed.returncode == 0, listed.stderr
    names = [ln.split()[0] for ln in listed.stdout.splitlines() if ln.startswith("  ")]
    assert 8 <= len(names) <= 12, names
    res = _bench("-c", DRIVER)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.splitlines()[-1])
    assert sorted({k.split()[0] for k in out}) == sorted(names)
    for key, (code, text) in out.items():
        assert code in (0, None), f"{key} exited {code}: {text[-500:]}"
        if key.endswith("--help"):
            assert "usage:" in text, key
        else:  # the figures, each as `name: value`, after the provenance line naming the command and commit
            assert text.startswith("# ") and "commit" in text.splitlines()[0], f"{key}: {text[:300]}"
            assert any(": " in ln and not ln.startswith("#") for ln in text.splitlines()), key
    oracle = json.loads((ROOT / "bench" / "results" / "oracle.json").read_text())["figures"]["ratio"]
    assert f"ratio: {oracle:.3f}" in out["oracle --report"][1]  # the committed figure, as the page quotes it
    assert "SAGE - one-shot gen-acc delta: +0.100" in out["explainers --report"][1]
    assert "round2 - SFT GEN delta: +5.4 [-0.6, +12.1]" in out["saeexplainer --report"][1]
    unknown = _bench("-m", "bench", "nosuch")
    assert unknown.returncode == 2 and "no benchmark 'nosuch'" in unknown.stderr


def test_a_raw_file_says_when_the_code_had_uncommitted_changes(tmp_path):
    """bench/common.py's `uncommitted_changes_at_start`: an untracked script under bench/ or src/ is code the
    named commit does not hold; the results the benchmarks write are not."""
    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "src").mkdir()
    shutil.copy(ROOT / "bench" / "common.py", repo / "bench" / "common.py")
    (repo / "bench" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text("__pycache__/\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                       capture_output=True)

    def dirty() -> bool:
        res = subprocess.run([sys.executable, "-c", "import bench.common as c; print(c.STARTED_DIRTY)"], cwd=repo,
                             capture_output=True, text=True, check=True)
        return res.stdout.strip() == "True"

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    assert dirty() is False
    (repo / "bench" / "results" / "new.json").write_text("{}")
    assert dirty() is False
    (repo / "bench" / "new_bench.py").write_text("print(1)\n")
    assert dirty() is True
    (repo / "bench" / "new_bench.py").unlink()
    (repo / "src" / "mod.py").write_text("x = 1\n")
    assert dirty() is True
