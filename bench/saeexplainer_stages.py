"""Each SAEExplainer training stage once at toy size on the default stack, timed: SFT (1 step of 2 references),
candidates + rewards (2 features × 3 candidates, 2 texts each), DPO round 1 (3 steps of 2 pairs).

    .venv/bin/python bench/saeexplainer_stages.py

The SFT references and the DPO pairs are hand-written (named as such below): this measures the cost of the
stages, not what training achieves (bench/saeexplainer.py does that). Held out: the latest run of the default
store (`make demo`'s). Folder: $SAEXPLAIN_HOME/saeexplainer/stages (recreated). Last line:
`dpo seconds per step: <value>`; raw: bench/results/saeexplainer_stages.json."""

from __future__ import annotations

import json
import shutil
import time

from results import record

from saexplain.cache.pipeline import default_store_path
from saexplain.llm import LLM
from saexplain.paths import home
from saexplain.pipeline.presets import cpu_preset
from saexplain.store import Store
from saexplain.train.config import TrainConfig
from saexplain.train.data import Pair, save_pairs
from saexplain.train.pipeline import Training

HAND_WRITTEN_REFERENCES = ["sports scores and results", "names of cities"]
HAND_WRITTEN_REJECTED = ["a word or phrase that is not a full sentence", "Given text."]


def main() -> None:
    store = str(default_store_path())
    with Store(store) as db:
        runs = db.runs("run")
    if not runs:
        raise SystemExit(f"no run in {store}: run `make demo` first (its features are held out)")
    folder = home() / "saeexplainer" / "stages"
    shutil.rmtree(folder, ignore_errors=True)
    refs = folder.parent / "stages-references.json"
    stages = cpu_preset("", "", "", 262144, store=store)
    cfg = TrainConfig(dir=str(folder), store=store, features="random:2", heldout_runs=str(runs[-1]["id"]),
                      references=str(refs), candidates=3, reward_texts=2, sft_epochs=1, sft_batch=2)
    t = Training(cfg, stages)
    refs.write_text(json.dumps([{"index": f, "description": d} for f, d in zip(t.features, HAND_WRITTEN_REFERENCES)]))
    timings = {}
    try:
        s = time.perf_counter()
        t.sft()
        timings["sft (1 step, batch 2)"] = time.perf_counter() - s
        s = time.perf_counter()
        try:
            t.pairs(1, LLM(stages.llm, store=t.store))
        except Exception as e:  # noqa: BLE001  no pair after one SFT step is expected: the cost is what is measured
            print(f"pairs: {e}")
        timings["candidates + rewards (2 features × 3)"] = time.perf_counter() - s
        print((folder / "round1" / "candidates.jsonl").read_text())
        lm = t.policy("sft")
        pairs = [Pair(f, ref, rej, 0.5, 0.0) for f, ref, rej in
                 zip(t.features, HAND_WRITTEN_REFERENCES, HAND_WRITTEN_REJECTED)]
        save_pairs(pairs, {p.feature: t.prompt(lm, p.feature) for p in pairs}, folder / "round1" / "pairs")
        del lm
        t.dpo(1, max_steps=3)
        log = json.loads((folder / "round1" / "dpo_log.json").read_text())
        for r in log:
            print({k: r[k] for k in ("step", "loss", "rewards/margins", "train_runtime") if k in r})
        runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
        timings["dpo (3 steps, batch 2)"] = runtime
    finally:
        t.close()
    for k, v in timings.items():
        print(f"| {k} | {v:.0f} s |")
    record("saeexplainer_stages", {"seconds": timings, "dpo_seconds_per_step": runtime / 3},
           {"dpo_log": log, "candidates": (folder / "round1" / "candidates.jsonl").read_text().splitlines()})
    print(f"dpo seconds per step: {runtime / 3:.1f}")


if __name__ == "__main__":
    main()
