"""Scorer costs and stability with the default LLM: per scorer, LLM calls, tokens and seconds per feature,
and how stable each score is between two runs with different seeds (a different score pool drawn for each
seed; generation/contrast writers at temperature 0.7 with the seed), as the correlation over features.

    .venv/bin/python -m bench scorers [--features 30] [--scorers detection,fuzzing,...] [--limit N]

Steering is not in the default list (its cost is the subject model's, not the LLM's: bisection and greedy
continuations for the feature and two distractors at four strengths); `--scorers steering --limit 10` measures
it on the first 10 features.

The explanations scored are the one-shot explanations of bench/explainers.py's run (same features, same
preset), made here first when missing. Results are appended to $SAEXPLAIN_HOME/bench/scorers.jsonl and
reused: killed, it resumes. Last line: `mean seed-to-seed r: <value>`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from bench.common import load, record
from saexplain.llm import LLM
from saexplain.paths import home
from saexplain.pipeline.presets import cpu_preset
from saexplain.pipeline.runner import run_all
from saexplain.sampling.pipeline import sample_features
from saexplain.sampling.record import make_record
from saexplain.score import SCORERS, pearson
from saexplain.store import Store
from saexplain.subject.oracle import Oracle

ALL = "detection,fuzzing,simulation,embedding,generation,contrast"


def scorer_for(cfgs, name: str, seed: int):
    base = cfgs.scorer(name)
    cfg = base.cfg
    if "seed" in type(cfg).model_fields:
        cfg = cfg.model_copy(update={"seed": seed})
    if name in ("generation", "contrast"):
        cfg = cfg.model_copy(update={"temperature": 0.7})
    return SCORERS.get(name)(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--scorers", default=ALL)
    ap.add_argument("--tokens", default="262144")
    ap.add_argument("--seed", type=int, default=1, help="feature choice seed (as bench/explainers.py)")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N of the run's features")
    args = ap.parse_args()
    names = [s.strip() for s in args.scorers.split(",") if s.strip()]
    store = str(home() / "bench.db")  # bench/explainers.py's store: its one-shot explanations are reused
    cfgs = cpu_preset(f"random:{args.features}", "oneshot", "", args.tokens, args.seed, store=store)
    h = run_all(cfgs, echo=lambda m: print(m, flush=True))  # one-shot explanations (reused when present)
    out = home() / "bench" / "scorers.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            if "cached" in r:  # rows from before `cached` was recorded are scored again (from the cache)
                done[(r["feature"], r["scorer"], r["seed"])] = r
    with Store(store) as db:
        oracle = Oracle.from_config(cfgs.subject)
        exps = {e["feature"]: e for e in db.explanations(h.run_id, method="oneshot", ok_only=True)}
        features = [f for f in h.records if f in exps][: args.limit]
        records = {}
        for seed in (0, 1):
            _, ex = sample_features(h.cache, features, cfgs.sampling.model_copy(update={"seed": seed}), db)
            stats = {r["feature"]: r for r in db.feature_stats(h.cache.run_id)}
            records[seed] = {f: make_record(f, stats[f], ex[f], h.cache.contexts) for f in features}
        llm = LLM(cfgs.llm, store=db)

        async def go():
            with open(out, "a") as fh:
                for f in features:
                    for name in names:
                        for seed in (0, 1):
                            if (f, name, seed) in done:
                                continue
                            t = time.perf_counter()
                            try:
                                res = await scorer_for(cfgs, name, seed).score(records[seed][f],
                                                                               exps[f]["description"], llm, oracle)
                                value, err = res.value, None
                                usage = res.usage
                            except Exception as e:  # noqa: BLE001  (a failed score is a result too)
                                value, err, usage = None, str(e), {}
                            row = {"feature": f, "scorer": name, "seed": seed, "value": value, "error": err,
                                   "calls": usage.get("calls", 0), "cached": usage.get("cached", 0),
                                   "tokens": usage.get("tokens_in", 0) + usage.get("tokens_out", 0),
                                   "seconds": time.perf_counter() - t}
                            done[(f, name, seed)] = row
                            fh.write(json.dumps(row) + "\n")
                            fh.flush()
                            print(f"feature {f} {name} seed {seed}: {value} ({row['seconds']:.0f}s)", flush=True)
            await llm.aclose()

        asyncio.run(go())
    rows = [r for r in done.values() if r["feature"] in features and r["scorer"] in names]  # this run's only
    rs = table(rows, names)
    # the default list writes bench/results/scorers.json; another list (e.g. steering alone) a file of its own
    result = "scorers" if args.scorers == ALL else "scorers-" + "-".join(names)
    record(result, {"mean_seed_to_seed_r": float(np.mean(rs)) if rs else None}, rows)
    print(f"mean seed-to-seed r: {np.mean(rs):.3f}" if rs else "mean seed-to-seed r: n/a")


def table(rows: list[dict], names: list[str]) -> list[float]:
    """Print the per-scorer table of cost and seed-to-seed stability; returns each scorer's r."""
    print("\n| scorer | features | LLM calls / feature | tokens / feature | seconds / feature | failed | "
          "seed-to-seed r (n) | mean seed 0 / seed 1 | mean abs. difference | n fresh |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    rs = []
    for name in names:
        mine = [r for r in rows if r["scorer"] == name]
        ok = [r for r in mine if r["error"] is None]
        by = {(r["feature"], r["seed"]): r["value"] for r in ok if r["value"] is not None}
        pairs = [(by[(f, 0)], by[(f, 1)]) for f in {k[0] for k in by} if (f, 0) in by and (f, 1) in by]
        r = pearson([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 2 else None
        if r is not None:
            rs.append(r)
        feats = len({x["feature"] for x in mine})
        # costs from scores that made every call afresh: a seed-0 score can repeat requests that an earlier
        # run made (the same score pool at temperature 0) and then costs nothing
        fresh = [x for x in ok if not x["cached"]]
        mean = (lambda k: np.mean([x[k] for x in fresh]) if fresh else float("nan"))
        m0, m1 = (np.mean([p[i] for p in pairs]) if pairs else float("nan") for i in (0, 1))
        diff = np.mean([abs(a - b) for a, b in pairs]) if pairs else float("nan")
        print(f"| {name} | {feats} | {mean('calls'):.1f} | {mean('tokens'):.0f} | {mean('seconds'):.1f} | "
              f"{len(mine) - len(ok)} | {'n/a' if r is None else f'{r:.2f}'} ({len(pairs)}) | "
              f"{m0:.3f} / {m1:.3f} | {diff:.3f} | {len(fresh)} |")
    print("(costs: mean over the scores that made no cached call; r: Pearson over features, seed 0 vs seed 1)")
    return rs


def report() -> None:
    """The committed record's table and headline (`python -m bench scorers --report`): nothing run."""
    doc = load("scorers")
    names = list(dict.fromkeys(r["scorer"] for r in doc["raw"]))
    table(doc["raw"], names)
    r = doc["figures"]["mean_seed_to_seed_r"]
    print("mean seed-to-seed r: n/a" if r is None else f"mean seed-to-seed r: {r:.3f}")


if __name__ == "__main__":
    main()
