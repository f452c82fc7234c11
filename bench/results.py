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


def record(name: str, figures: dict[str, Any], raw: Any = None) -> Path:
    """Write bench/results/<name>.json: the headline figures, the raw data they come from, the command line,
    the commit and the machine. One file per benchmark (a rerun replaces it; git keeps the history)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    doc = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit,
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
