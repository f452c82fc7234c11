"""The concurrent pipeline with one slot: the in-process default LLM (llama.cpp, one request at a time) must not
make `saexplain run` slower than the sequential pipeline it replaced. Runs the CPU preset (make demo's) on 4
features of a corpus file (`--corpus`, default the shipped tiny-shakespeare; pass the same file to both
versions so they do the same work — a CSV such as AG News reads into the same documents under every version), one-shot + SAGE, scored by generation, detection and embedding, in a fresh store
(cold LLM request cache), and prints the explain and score stage times.

    .venv/bin/python bench/pipeline_inprocess.py                       # this checkout
    PYTHONPATH=<old checkout>/src .venv/bin/python bench/pipeline_inprocess.py --label before
    .venv/bin/python bench/pipeline_inprocess.py --compare             # ratio of the two recorded runs

Needs `make setup-llm` and the default SAE. Ends with `wall ratio (before / after): X`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

from results import RESULTS, record

FEATURES = "4"  # how many (chosen by the run's seeded random:N within the density band)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--corpus", default=None, help="one corpus file (default: the shipped tiny-shakespeare)")
    args = ap.parse_args()
    if args.compare:
        runs = json.loads((RESULTS / "pipeline_inprocess.json").read_text())["raw"]
        before, after = runs["before"]["stages_s"], runs["after"]["stages_s"]
        ratio = before / after
        print(f"explain+score: before {before:.0f}s, after {after:.0f}s")
        print(f"wall ratio (before / after): {ratio:.3f}")
        return
    import saexplain
    from saexplain.data.contexts import CorpusConfig
    from saexplain.pipeline.presets import cpu_preset
    from saexplain.pipeline.runner import run_all

    store = Path(tempfile.mkdtemp(prefix="saexplain-inprocess-")) / "store.db"
    cfgs = cpu_preset(f"random:{FEATURES}", "oneshot,sage", "generation,detection,embedding", args.tokens, 0,
                      store=str(store))
    from saexplain.data.corpus import default_corpus

    corpus = args.corpus or default_corpus()[-1]
    cfgs = dataclasses.replace(cfgs, corpus=CorpusConfig(corpus=[str(corpus)]))
    lines: list[str] = []
    t0 = time.perf_counter()
    h = run_all(cfgs, echo=lambda m: (lines.append(m), print(m, flush=True)))
    wall = time.perf_counter() - t0
    stages = {}
    for line in lines:
        m = re.match(r"(explain|score): .*\((\d+(?:\.\d+)?)s\)$", line)
        if m:
            stages[m.group(1)] = float(m.group(2))
    row = {"code": str(Path(saexplain.__file__).parent), "features": sorted(h.records), "stages": stages,
           "stages_s": sum(stages.values()), "wall_s": wall,
           "descriptions": [line for line in lines if " LLM calls): " in line]}
    path = RESULTS / "pipeline_inprocess.json"
    raw = json.loads(path.read_text())["raw"] if path.is_file() else {}
    raw[args.label] = row
    figures = {"stages_s_" + k: v["stages_s"] for k, v in raw.items()}
    if "before" in raw and "after" in raw:
        figures["wall_ratio_before_over_after"] = raw["before"]["stages_s"] / raw["after"]["stages_s"]
    record("pipeline_inprocess", figures, raw)
    print(f"{args.label}: explain+score {row['stages_s']:.0f}s on features {row['features']}")


if __name__ == "__main__":
    main()
