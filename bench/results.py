"""Raw benchmark output, committed: every figure in docs/benchmarks.md can be traced to a JSON file under
bench/results/ that names the command which produced it, when, and on what machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# the code a benchmark runs is the code when it started (imported): commits made while it runs are not in it
STARTED_AT = _git("rev-parse", "--short", "HEAD")
# (an untracked script counts: a new benchmark not yet committed is not the code of the commit it names; the
# results and state the benchmarks write themselves do not)
STARTED_DIRTY = bool(_git("status", "--porcelain", "--", "../src", ".", ":(exclude)results", ":(exclude)state"))


def record(name: str, figures: dict[str, Any], raw: Any = None) -> Path:
    """Write bench/results/<name>.json: the headline figures, the raw data they come from, the command line,
    the commit the benchmark started at (and whether src/ or bench/ had uncommitted changes then) and the machine. One file per benchmark (a rerun replaces it; git keeps the history)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
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
