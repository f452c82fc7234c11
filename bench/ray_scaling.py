"""Ray scale-out on this machine: the same work with the local executor, 1 Ray worker and 2 Ray workers.

    .venv/bin/python -m bench ray_scaling [--features 32] [--latency 0.5] [--tokens 200k] [--max-concurrency 4]

The subject is the fast suite's tiny Gemma-3 with the ground-truth SAE (saexplain.testing.tiny); the LLM is a FAKE
OpenAI-compatible server (saexplain.testing.fake_server, its own process: canned schema-valid replies, a fixed
latency per reply, unlimited slots). Everything runs on this machine's CPUs (Ray started with all of them, one CPU per worker).

- run: N features × (oneshot, sage) × (detection, generation), a fresh store each time, the cache built once
  before (not timed). Throughput = features / wall time of the explain/score loop; Ray's start-up (cluster and
  workers loading the subject) is reported apart. Each worker has its own LLM client with --max-concurrency
  slots (one endpoint per node is what --ray-nodes is for), so 2 workers keep twice the requests in flight.
- cache: `tokens` tokens of the shipped tiny-shakespeare at 64-token contexts, 64 contexts per shard, a fresh
  $SAEXPLAIN_HOME each time. Throughput = tokens / seconds spent writing shards (tokenising, statistics and
  start-up apart); the manifests of all three caches are compared (byte-identical shards).

Ends with `ray 2-actor / 1-actor throughput: X` for the run and for the cache, and the overhead of Ray itself as
`ray 1-actor / local throughput: X` for each."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import FaultServerProcess, free_port, record, tiny_ground_truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds per reply of the fake server")
    ap.add_argument("--max-concurrency", type=int, default=4, help="LLM requests in flight per worker")
    ap.add_argument("--tokens", default="200k", help="tokens to cache")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saexplain-bench-ray-"))
    os.environ["HF_HUB_OFFLINE"] = "1"

    from saexplain.cache.config import CacheConfig
    from saexplain.cache.pipeline import build_cache
    from saexplain.data.contexts import CorpusConfig
    from saexplain.data.corpus import default_corpus
    from saexplain.distributed import RayConfig, RaySession
    from saexplain.explain.sage import SAGEConfig
    from saexplain.llm.client import LLMConfig
    from saexplain.pipeline.configs import RunConfig, StageConfigs
    from saexplain.pipeline.runner import run_all
    from saexplain.sampling.sampler import SamplingConfig
    from saexplain.store import Store
    from saexplain.subject.config import SubjectConfig

    shakespeare = Path(default_corpus()[1])  # the shipped corpus's tiny-shakespeare
    gt = tiny_ground_truth(tmp)
    model, corpus = gt["model"], gt["corpus"]
    subject = SubjectConfig(model=str(model), sae=str(gt["sae"]))
    quiet = {"echo": lambda m: None}
    variants = [("local", None), ("ray-1", RayConfig(ray="local", ray_workers=1)),
                ("ray-2", RayConfig(ray="local", ray_workers=2))]

    # ---------------------------------------------------------------------------------------------- cache
    corpus_cache = CorpusConfig(corpus=[str(shakespeare)], context=64)
    cache_cfg = CacheConfig.build(tokens=args.tokens, shard_contexts=64)
    cache_rows, manifests = {}, {}
    for name, ray_cfg in variants:
        os.environ["SAEXPLAIN_HOME"] = str(tmp / f"home-cache-{name}")
        timing = {}

        def timed(workers, timing=timing):
            inner = workers.write_shards

            def write_shards(*a, **kw):
                t = time.perf_counter()
                inner(*a, **kw)
                timing["shards_s"] = time.perf_counter() - t
            workers.write_shards = write_shards
            return workers

        t0 = time.perf_counter()
        with Store(tmp / f"cache-{name}.db") as db:
            if ray_cfg is None:
                from saexplain.cache.pipeline import LocalCacheWorkers

                run = build_cache(subject, corpus_cache, cache_cfg, db, progress=False,
                                  workers=timed(LocalCacheWorkers(subject)))
                startup = 0.0
            else:
                t_start = time.perf_counter()
                with RaySession(ray_cfg, **quiet) as ray:
                    workers = timed(ray.cache_workers(subject))
                    workers.d_sae  # noqa: B018  (start the workers: their start-up is reported apart)
                    startup = time.perf_counter() - t_start
                    run = build_cache(subject, corpus_cache, cache_cfg, db, progress=False, workers=workers)
        total = time.perf_counter() - t0
        tokens = run.cache.n_contexts * run.cache.context
        manifests[name] = [(e["name"], e["sha256"]) for e in run.cache.meta["shards"]]
        cache_rows[name] = {"tokens": tokens, "shards": len(manifests[name]), "shards_s": timing["shards_s"],
                            "tok_per_s": tokens / timing["shards_s"], "startup_s": startup, "total_s": total}
        print(f"cache {name}: {tokens:,} tokens in {len(manifests[name])} shards, {timing['shards_s']:.2f}s writing "
              f"shards ({tokens / timing['shards_s']:,.0f} tok/s); start-up {startup:.1f}s; whole command "
              f"{total:.1f}s", flush=True)
    identical = manifests["local"] == manifests["ray-1"] == manifests["ray-2"]
    print(f"cache shards byte-identical across local, 1 and 2 workers: {identical}")

    # ------------------------------------------------------------------------------------------------ run
    os.environ["SAEXPLAIN_HOME"] = str(tmp / "home-run")
    port = free_port()
    run_rows = {}
    with FaultServerProcess("universal", port=port, delay=args.latency):
        def cfgs(name):
            return StageConfigs(
                run=RunConfig(features=f"random:{args.features}", explainers="oneshot,sage",
                              scorers="detection,generation", store=str(tmp / f"run-{name}.db"),
                              min_density=1e-5, max_density=0.5),
                subject=subject, corpus=CorpusConfig(corpus=[str(corpus)], context=48),
                cache=CacheConfig(tokens=60_000), sampling=SamplingConfig(window=16),
                sage=SAGEConfig(selection="none"),
                llm=LLMConfig(llm=f"openai-compatible:http://127.0.0.1:{port}/v1#fake",
                              max_concurrency=args.max_concurrency, timeout=60, retries=2))

        c = cfgs("warm")
        with Store(c.run.store) as db:
            build_cache(c.subject, c.corpus, c.cache, db, progress=False)  # the cache once, before any timing
        stored = {}
        for name, ray_cfg in variants:
            c = cfgs(name)
            t0 = time.perf_counter()
            if ray_cfg is None:
                h = run_all(c, **quiet)
            else:
                with RaySession(ray_cfg, **quiet) as ray:
                    h = run_all(c, ray=ray, **quiet)
            total = time.perf_counter() - t0
            wall, n = h.timing["loop_wall"], len(h.records)
            with Store(c.run.store, readonly=True) as db:
                requests = len(db.llm_calls(h.run_id))
                stored[name] = sorted((e["feature"], e["method"], e["status"], e["description"])
                                      for e in db.explanations(h.run_id))
            run_rows[name] = {"features": n, "loop_wall_s": wall, "features_per_s": n / wall,
                              "features_per_hour": 3600 * n / wall, "requests": requests,
                              "startup_and_report_s": total - wall, "total_s": total,
                              "run_concurrency": h.timing["run_concurrency"], "counts": h.counts}
            print(f"run {name}: {n} features in {wall:.1f}s ({3600 * n / wall:,.0f} features/hour), {requests} LLM "
                  f"requests; outside the loop (start-up, cache check, report) {total - wall:.1f}s", flush=True)
    same = stored["local"] == stored["ray-1"] == stored["ray-2"]
    print(f"run explanations identical across local, 1 and 2 workers: {same}")

    figures = {
        "run_ray2_over_ray1": run_rows["ray-2"]["features_per_s"] / run_rows["ray-1"]["features_per_s"],
        "run_ray1_over_local": run_rows["ray-1"]["features_per_s"] / run_rows["local"]["features_per_s"],
        "cache_ray2_over_ray1": cache_rows["ray-2"]["tok_per_s"] / cache_rows["ray-1"]["tok_per_s"],
        "cache_ray1_over_local": cache_rows["ray-1"]["tok_per_s"] / cache_rows["local"]["tok_per_s"],
        "cache_identical": identical, "run_identical": same}
    record("ray_scaling", figures, {"args": vars(args), "cpus": os.cpu_count(), "cache": cache_rows,
                                    "run": run_rows})
    print(f"run: ray 1-actor / local throughput: {figures['run_ray1_over_local']:.2f}")
    print(f"cache: ray 1-actor / local throughput: {figures['cache_ray1_over_local']:.2f}")
    print(f"run: ray 2-actor / 1-actor throughput: {figures['run_ray2_over_ray1']:.2f}")
    print(f"cache: ray 2-actor / 1-actor throughput: {figures['cache_ray2_over_ray1']:.2f}")


if __name__ == "__main__":
    main()
