"""How long a newcomer waits: `make demo` end to end on a fresh clone (a new .venv), with an empty
$SAEXPLAIN_HOME — either with nothing cached at all (`--mode cold`: llama-cpp-python is built) or with only the
llama.cpp wheel cached (`--mode warm-wheel`). pip's own cache is switched off (PIP_NO_CACHE_DIR) so that every
package is installed as on a new machine (from this machine's package index).

    .venv/bin/python -m bench demo_time --mode cold          # then --mode warm-wheel
    (options: --workdir /tmp/saexplain-demo-time, --keep)

The clone is of this checkout's HEAD, alone in an empty folder (nothing beside it: the default corpus, the
default SAE and the tests' data come from the repository itself). The demo runs
with DEMO_ARGS=--no-stay: it serves the web UI while it works and exits when the run is done (a user's demo keeps
serving). Each line of the output is timestamped, so the time of each step comes from the log.
Last line: `demo cold minutes: X` or `demo warm-wheel minutes: X`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import load, record

ROOT = Path(__file__).resolve().parent.parent

MARKS = {  # the first line matching each pattern marks the end of a step (the log is timestamped)
    "venv + packages (make setup)": r"touch \.venv/\.installed-",
    "llama.cpp wheel + LLM parts (make setup-llm)": r"touch \.venv/\.llm-installed-",
    "subject model + SAE loaded": r"^subject: ",
    "cache + statistics": r"^cache: ",
    "features sampled": r"^sample: ",
    "explained and scored": r"^score: ",
    "report": r"^report ",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["cold", "warm-wheel"], required=True)
    ap.add_argument("--workdir", default="/tmp/saexplain-demo-time")
    ap.add_argument("--keep", action="store_true", help="keep the clone and its home afterwards")
    args = ap.parse_args()
    work = Path(args.workdir) / args.mode
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work / "lone" / "saexplain")], check=True)
    home = work / "home"
    home.mkdir()
    if args.mode == "warm-wheel":
        src = Path(os.environ.get("SAEXPLAIN_HOME") or Path.home() / ".cache" / "saexplain") / "wheels"
        if not any(src.glob("llama-*/*.whl")):
            sys.exit(f"no cached llama.cpp wheel under {src}: run `make setup-llm` (or --mode cold) first")
        shutil.copytree(src, home / "wheels")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SAEXPLAIN_"))}
    env.update({"SAEXPLAIN_HOME": str(home), "PIP_NO_CACHE_DIR": "1", "PYTHONUNBUFFERED": "1"})
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    log_path = work / "demo.log"
    t0 = time.time()
    steps: dict[str, float] = {}
    with open(log_path, "w") as log:
        clone = work / "lone" / "saexplain"
        proc = subprocess.Popen(["make", "demo", "DEMO_ARGS=--no-stay"], cwd=clone, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            now = time.time() - t0
            log.write(f"[{now:8.1f}s] {line}")
            log.flush()
            for name, pattern in MARKS.items():
                if name not in steps and re.search(pattern, line.strip()):
                    steps[name] = now
                    print(f"{now / 60:6.1f} min  {name}", flush=True)
        rc = proc.wait()
    total = time.time() - t0
    tail = log_path.read_text().splitlines()[-40:]
    name = f"demo {args.mode} minutes"
    figures = {name.replace(" ", "_").replace("-", "_"): total / 60, "exit_code": rc,
               "steps_minutes": {k: v / 60 for k, v in steps.items()}}
    record("demo_time", figures, {"mode": args.mode, "log_tail": tail, "workdir": str(work)})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if rc != 0:
        print(f"make demo exited with {rc} (log kept in the raw results' tail)")
    print(f"{name}: {total / 60:.1f}")


def report() -> None:
    """The committed record's steps and total (`python -m bench demo_time --report`): nothing run."""
    figures = load("demo_time")["figures"]
    before = 0.0
    for step, at in figures["steps_minutes"].items():  # the log's marks are minutes since the start
        print(f"{step}: {at - before:.1f} min")
        before = at
    name = next(k for k in figures if k.endswith("_minutes") and k != "steps_minutes")
    print(f"make demo exit code: {figures['exit_code']}")
    print(f"{name.replace('_minutes', '').replace('_', ' ')} minutes: {figures[name]:.1f}")


if __name__ == "__main__":
    main()
