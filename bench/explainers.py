"""The comparison users ask for: one-shot vs max-act + logit lens vs SAGE on held-out features of the default
SAE, the same LLM judging every method on the same score-pool windows: generation accuracy, detection,
simulation r (with bootstrap 95 % CIs over features), LLM calls and tokens per feature.

    .venv/bin/python -m bench explainers [--features 30] [--llm default] [--tokens 256k]
    # issue 18's comparison: 60 features, one-shot vs SAGE, the scorers that rank them (about 3.5 min a feature)
    .venv/bin/python -m bench explainers --features 60 --methods oneshot,sage --scorers generation,detection,embedding

Resumable: it is one `saexplain run` in its own store ($SAEXPLAIN_HOME/bench.db, so the demo's runs stay
apart); killed, it continues where it stopped and may span sessions. Uses the CPU preset of `make demo` (pipeline/presets.py). Prints the report, then the
headline line `SAGE - one-shot gen-acc delta: <value> [<lo>, <hi>]`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import load, record
from saexplain.cache.pipeline import cache_key
from saexplain.paths import home
from saexplain.pipeline.presets import cpu_preset
from saexplain.pipeline.runner import choose_features, run_all
from saexplain.report import markdown, summarize
from saexplain.store import Store

SAGE_REFERENCE_TOKENS = (350_000, 750_000)  # per feature, SAGE's reference code (the figure)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--llm", default="default")
    ap.add_argument("--tokens", default="262144", help="tokens to cache (the demo's 256k cache is reused)")
    ap.add_argument("--store", default=None, help="store (default: $SAEXPLAIN_HOME/bench.db)")
    ap.add_argument("--report-only", action="store_true", help="print the figures so far (no LLM work)")
    ap.add_argument("--seed", type=int, default=1, help="feature choice seed (demo uses 0)")
    ap.add_argument("--methods", default="oneshot,oneshot+logitlens,sage", help="explainers compared (one-shot is "
                    "the baseline)")
    ap.add_argument("--scorers", default="generation,detection,simulation,embedding")
    args = ap.parse_args()
    store = args.store or str(home() / "bench.db")
    cfgs = cpu_preset(f"random:{args.features}", args.methods, args.scorers, args.tokens, args.seed, llm=args.llm,
                      store=store)
    key, _ = cache_key(cfgs.subject, cfgs.corpus, cfgs.cache)
    run_id, s = None, None
    if Path(store).is_file():
        with Store(store, readonly=True) as db:  # the run of exactly these settings (not the store's latest run)
            run_id = db.find_run("run", cfgs.identity(key))
            if run_id is not None:
                s = summarize(db, run_id, baseline="oneshot")
                # a run's identity leaves the feature list out: the run found may hold another seed's features
                cache_id = db.find_run("cache", key)
                wanted = set(choose_features(cfgs.run.features, db.feature_stats(cache_id), cfgs.run))
                have = {int(f) for f in s["features"]}
                if have - wanted:
                    raise SystemExit(f"the run in {store} holds features that --seed {args.seed} does not choose "
                                     f"({len(have & wanted)} of {len(have)} in common): its figures are another "
                                     f"draw's; give this seed's own --store")
    if args.report_only:
        if s is None:
            raise SystemExit(f"no run with these settings in {store} yet: run without --report-only first")
        print(markdown(s))
    else:
        t0 = time.perf_counter()
        h = run_all(cfgs, echo=lambda m: print(m, flush=True))
        print(f"wall: {time.perf_counter() - t0:.0f}s")
        print((h.folder / "report.md").read_text())
        with Store(store, readonly=True) as db:
            s = summarize(db, h.run_id, baseline="oneshot")
    figs = figures(s)
    record("explainers", figs, s)
    headline(figs)


def report() -> None:
    """The committed record's report and headline (`python -m bench explainers --report`): nothing run."""
    doc = load("explainers")
    print(markdown(doc["raw"]))
    headline(doc["figures"])


def figures(s: dict) -> dict:
    """The headline figures of a summary: SAGE − one-shot on generation, SAGE's tokens per feature (None without
    SAGE rows) and the features both explained."""
    return {"sage_minus_oneshot_gen_acc": s["paired"].get("sage|generation"),
            "sage_tokens_per_feature": s["usage"].get("sage", {}).get("tokens"),
            "features": sum(all(m in by for m in ("oneshot", "sage")) for by in s["features"].values())}


def headline(figs: dict) -> None:
    print(f"features explained by one-shot and SAGE so far: {figs['features']}")
    tokens = figs["sage_tokens_per_feature"]
    if tokens is not None:
        print(f"SAGE tokens per feature: {tokens:.0f} = {tokens / SAGE_REFERENCE_TOKENS[0]:.3f}–"
              f"{tokens / SAGE_REFERENCE_TOKENS[1]:.3f}× the reference code's 0.35–0.75M")
    d = figs["sage_minus_oneshot_gen_acc"]
    if d and d["n"]:
        print(f"SAGE - one-shot gen-acc delta: {d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
              f"(n={d['n']} features)")
        print(f"per feature: SAGE higher on {d['wins']}, lower on {d['losses']}, equal on {d['ties']}")
    else:
        print("SAGE - one-shot gen-acc delta: n/a (no feature scored by both yet)")


if __name__ == "__main__":
    main()
