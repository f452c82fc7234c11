"""Feature-page latency of `saexplain serve` on a real cache: the default SAE (4,096 features) over the default
corpus (the largest cache of it: the shipped corpus holds fewer than 1M tokens at 64-token contexts).

    .venv/bin/python -m bench web [--features 64] [--rounds 3] [--tokens 1000000]

Set-up (in a fresh store of its own, `$SAEXPLAIN_HOME/bench-web.db`): the cache is built or reused
(`build_cache`, the same as `saexplain cache`), N random live features are sampled (explain + score pools, the
sampler's defaults), and a run holds for each feature two explanations with three scores each and a SAGE-shaped
trace of 12 probes — written by this script, named as synthetic (run name "bench-web-synthetic"): the page's
work is reading and rendering them, which does not depend on who wrote the text. Then a real `saexplain serve`
process is asked for every feature page over HTTP: round 1 is cold (each shard's sha256 is checked on first
touch), later rounds warm. Then the live probe: 20 sentences, each POSTed for one feature once the subject has
loaded (the oracle on Gemma 3 270M, CPU), timed over HTTP.
Last line: `feature page p50 ms: X` (warm rounds)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.common import record


def build_store(path: Path, n_features: int, tokens: int) -> tuple[int, list[int], int]:
    from saexplain.cache.config import CacheConfig
    from saexplain.cache.pipeline import build_cache
    from saexplain.data.contexts import CorpusConfig
    from saexplain.pipeline.configs import RunConfig, StageConfigs
    from saexplain.sampling.pipeline import sample_features
    from saexplain.store import Store
    from saexplain.subject.config import SubjectConfig

    cfgs = StageConfigs(run=RunConfig(name="bench-web-synthetic", explainers="oneshot,sage",
                                      scorers="detection,generation,embedding"),
                        subject=SubjectConfig(), corpus=CorpusConfig(), cache=CacheConfig(tokens=tokens))
    with Store(path) as db:
        cache = build_cache(cfgs.subject, cfgs.corpus, cfgs.cache, db, progress=True)
        stats = [s for s in db.feature_stats(cache.run_id) if not s["dead"]]
        rng = np.random.default_rng(0)
        features = sorted(int(f) for f in rng.choice([s["feature"] for s in stats], n_features, replace=False))
        existing = [r for r in db.runs("run")]
        if existing:
            return existing[0]["id"], features, cache.cache.n_contexts * cache.cache.context
        t = time.perf_counter()
        _, examples = sample_features(cache, features, cfgs.sampling, db)
        print(f"sampled {len(features)} features in {time.perf_counter() - t:.1f}s")
        config = json.dumps({**cfgs.to_dict(), "features": features, "cache_key": cache.key}, sort_keys=True)
        run_id = db.get_or_create_run("run", cfgs.identity(cache.key), config)
        for f in features:
            top = [e for e in examples[f] if e.kind == "top" and e.pool == "explain"][:12]
            for method in ("oneshot", "sage"):
                trace = []
                if method == "sage":
                    trace.append({"kind": "exemplars", "content": "synthetic exemplars"})
                    trace.append({"kind": "status", "content": {str(i): {"status": "ACTIVE", "text": f"hypothesis {i}",
                                                                          "negative": i == 4} for i in range(1, 5)}})
                    for i, e in enumerate(top):
                        toks, _ = cache.contexts.window(e.context, e.start, e.end)
                        trace.append({"kind": "probe", "content": {
                            "hypothesis": i % 4 + 1, "probe": "".join(toks), "expected": "high", "measured": 1.0,
                            "relative": 0.5, "consistent": True, "tokens": toks,
                            "acts": [round(float(a), 4) for a in e.acts]}})
                    trace.append({"kind": "stop", "content": {"reason": "synthetic"}})
                eid = db.put_explanation(run_id, f, method, f"synthetic {method} explanation of feature {f}", [],
                                         {}, {"calls": 1}, trace)
                for scorer in ("detection", "generation", "embedding"):
                    db.put_score(eid, scorer, float(rng.uniform()), {}, {"calls": 1},
                                 text=f"synthetic {method} explanation of feature {f}")
        return run_id, features, cache.cache.n_contexts * cache.cache.context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    args = ap.parse_args()
    from saexplain.paths import home

    store = home() / "bench-web.db"
    run_id, features, tokens = build_store(store, args.features, args.tokens)
    from saexplain.web.launch import ServerProcess

    with ServerProcess(store) as srv:
        url = srv.url
        rounds = []
        for _ in range(args.rounds):
            ms = []
            for f in features:
                t = time.perf_counter()
                with urllib.request.urlopen(f"{url}/runs/{run_id}/features/{f}", timeout=60) as r:
                    body = r.read()
                    assert r.status == 200 and b"Activation examples" in body
                ms.append(1000 * (time.perf_counter() - t))
            rounds.append(ms)
            print(f"round {len(rounds)}: p50 {statistics.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, "
                  f"max {max(ms):.1f} ms")
        probe_ms = []
        sentences = [f"The {w} walked into the old forest at night and found a small house." for w in
                     ("king", "queen", "miller", "tailor", "hunter", "fisherman", "wolf", "fox", "girl", "boy")]
        sentences += [f"On day {i} the market fell sharply, and the bank raised its rates again." for i in range(10)]
        for _ in range(600):  # the subject loads in the background: wait until the probe answers
            if json.loads(urllib.request.urlopen(f"{url}/api/runs/{run_id}/probe-status").read())["status"] != \
                    "loading":
                break
            time.sleep(0.5)
        for i, text in enumerate(sentences):
            req = urllib.request.Request(f"{url}/api/runs/{run_id}/probe", method="POST",
                                         data=json.dumps({"text": text, "feature": features[i % len(features)]}
                                                         ).encode(), headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200 and json.loads(r.read())["tokens"]
            probe_ms.append(1000 * (time.perf_counter() - t))
            time.sleep(0.5)  # under the probe's rate limit (20 per 10 s per client)
        print(f"live probe: p50 {statistics.median(probe_ms):.1f} ms, max {max(probe_ms):.1f} ms "
              f"({len(probe_ms)} sentences of ~15 tokens)")
    warm = [m for r in rounds[1:] for m in r] or rounds[0]
    figures = {"feature_page_p50_ms": statistics.median(warm), "feature_page_p90_ms": float(np.percentile(warm, 90)),
               "cold_p50_ms": statistics.median(rounds[0]), "features_in_sae": 4096, "cache_tokens": tokens,
               "pages": len(features), "probe_p50_ms": statistics.median(probe_ms), "probe_max_ms": max(probe_ms)}
    record("web", figures, {"run": run_id, "features": features, "rounds_ms": rounds, "probe_ms": probe_ms})
    print(f"cache {tokens:,} tokens, 4,096 features; cold p50 {figures['cold_p50_ms']:.1f} ms")
    print(f"feature page p50 ms: {figures['feature_page_p50_ms']:.1f}")


if __name__ == "__main__":
    main()
