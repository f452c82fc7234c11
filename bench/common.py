"""What the benchmarks share.

- Raw results: `record(name, figures, raw)` writes `bench/results/<name>.json` — the figures, the raw data behind
  them, the command line, the commit the benchmark started at (and whether src/ or bench/ had uncommitted changes
  then) and the machine; one file per benchmark, replaced by a rerun (git keeps the old ones). `load(name)` reads
  it back and `report_lines(doc)` prints its figures as `name: value` lines (`python -m bench NAME --report`).
- Set-up: a free port on 127.0.0.1 (`saexplain.net`), the tiny real subject with its ground-truth SAE and a corpus cut from the
  shipped Grimm's tales (`saexplain.testing.tiny`), and the FAKE OpenAI-compatible server process
  (`saexplain.testing.fake_server`: canned replies after a fixed latency, unlimited slots)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from saexplain.net import free_port  # noqa: F401  (for the benchmarks' servers)
from saexplain.testing.fake_server import FaultServerProcess  # noqa: F401  (the fake server, for benchmarks)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=BENCH, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# the code a benchmark runs is the code when it started (imported): commits made while it runs are not in it
STARTED_AT = _git("rev-parse", "--short", "HEAD")
# (an untracked script counts: a new benchmark not yet committed is not the code of the commit it names; the
# results the benchmarks write themselves do not)
STARTED_DIRTY = bool(_git("status", "--porcelain", "--", str(BENCH.parent / "src"), str(BENCH),
                           ":(exclude)results"))


def record(name: str, figures: dict[str, Any], raw: Any = None) -> Path:
    """Write bench/results/<name>.json (see the module's docstring) and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "command": " ".join([sys.argv[0], *sys.argv[1:]]),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": STARTED_AT,
           "uncommitted_changes_at_start": STARTED_DIRTY, "commit_at_finish": _git("rev-parse", "--short", "HEAD"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "figures": figures, "raw": raw}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=_jsonable, allow_nan=False) + "\n")
    print(f"raw results: {path}")
    return path


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float):
        return None
    return str(obj)


def load(name: str) -> dict:
    """The committed raw file of a benchmark; one line when it is missing or not JSON."""
    path = RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no raw results (run `python -m bench {name}` first)") from None
    except ValueError as e:
        raise SystemExit(f"{path}: not a raw results file ({e})") from None


def provenance(doc: dict) -> str:
    dirty = " (uncommitted changes at start)" if doc.get("uncommitted_changes_at_start") else ""
    cpus = doc.get("machine", {}).get("cpus")
    return (f"# {doc.get('benchmark')}: `{doc.get('command')}` · commit {doc.get('commit')}{dirty} · "
            f"finished {doc.get('finished')} · {cpus} CPUs")


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def flat(figures: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested figures as (dotted name, value) pairs."""
    out = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flat(value, name + ".")
        else:
            out.append((name, value))
    return out


def report_lines(doc: dict) -> list[str]:
    """The provenance line, then every figure of a raw file as `name: value`."""
    return [provenance(doc)] + [f"{k}: {fmt(v)}" for k, v in flat(doc.get("figures") or {})]


def tiny_ground_truth(folder: Path, corpus_chars: int = 200_000) -> dict:
    """The tiny real subject under `folder`: its model, the ground-truth SAE (feature 0 fires on "wife"), and a
    corpus file cut from the shipped Grimm's tales ({"model", "sae", "corpus", …})."""
    from saexplain.data.corpus import default_corpus
    from saexplain.testing.tiny import write_ground_truth_sae, write_tiny_model

    gt = write_ground_truth_sae(write_tiny_model(folder / "model"), folder / "sae")
    corpus = folder / "tales.txt"
    corpus.write_text(Path(default_corpus()[0]).read_text(encoding="utf-8")[:corpus_chars])
    return {**gt, "corpus": corpus}
