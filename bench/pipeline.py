"""Throughput of `saexplain run` against a parallel LLM server: how much of the server's slots the pipeline
keeps busy. The server is a FAKE OpenAI-compatible server (saexplain.testing.fake_server, its own process):
canned, schema-valid replies (saexplain.testing.scripted `universal`), a fixed latency per reply and unlimited
parallel slots; the subject is the fast suite's tiny Gemma-3 with the ground-truth SAE (saexplain.testing.tiny).

    .venv/bin/python -m bench pipeline [--features 64] [--latency 1.0] [--max-concurrency 32]

For each max_concurrency: a fresh store and $SAEXPLAIN_HOME, one `run_all` of N features × (oneshot, sage) ×
(detection, generation, embedding, simulation). effective concurrency = Σ request latency (the call log) ÷ wall
time of the explain/score loop; CPU seconds per feature = the process's CPU time during that loop (the LLM runs
in the server's process) ÷ features. Ends with `effective concurrency: X` and `ratio: X / max_concurrency`."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.common import FaultServerProcess, free_port, load, record, tiny_ground_truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per reply of the fake server")
    ap.add_argument("--max-concurrency", type=int, nargs="+", default=[32])
    ap.add_argument("--run-concurrency", type=int, default=None, help="features in flight (default: the run's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saexplain-bench-pipeline-"))
    os.environ["SAEXPLAIN_HOME"] = str(tmp / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"

    from saexplain.cache.config import CacheConfig
    from saexplain.data.contexts import CorpusConfig
    from saexplain.explain.sage import SAGEConfig
    from saexplain.llm.client import LLMConfig
    from saexplain.pipeline.configs import RunConfig, StageConfigs
    from saexplain.pipeline.runner import run_all
    from saexplain.sampling.sampler import SamplingConfig
    from saexplain.score.simulation import SimulationConfig
    from saexplain.store import Store
    from saexplain.subject.config import SubjectConfig

    gt = tiny_ground_truth(tmp)
    model, corpus = gt["model"], gt["corpus"]
    port = free_port()
    rows = []
    with FaultServerProcess("universal", port=port, delay=args.latency):
        for mc in args.max_concurrency:
            store = tmp / f"store-{mc}.db"
            cfgs = StageConfigs(
                run=RunConfig(features=f"random:{args.features}", explainers="oneshot,sage",
                              scorers="detection,generation,embedding,simulation", store=str(store),
                              min_density=1e-5, max_density=0.5, run_concurrency=args.run_concurrency),
                subject=SubjectConfig(model=str(model), sae=str(gt["sae"])),
                corpus=CorpusConfig(corpus=[str(corpus)], context=48), cache=CacheConfig(tokens=60_000),
                sampling=SamplingConfig(window=16), sage=SAGEConfig(selection="none"),
                simulation=SimulationConfig(logprobs=False),
                llm=LLMConfig(llm=f"openai-compatible:http://127.0.0.1:{port}/v1#fake", max_concurrency=mc,
                              timeout=60, retries=2))
            h = run_all(cfgs, echo=lambda m: None)
            with Store(store, readonly=True) as db:
                calls = db.llm_calls(h.run_id)
            latency = sum(c["seconds"] for c in calls if c["error"] is None)
            wall, cpu, n = h.timing["loop_wall"], h.timing["loop_cpu"], len(h.records)
            eff = latency / wall
            row = {"max_concurrency": mc, "run_concurrency": h.timing["run_concurrency"], "features": n,
                   "requests": len(calls), "failed_requests": sum(c["error"] is not None for c in calls),
                   "sum_latency_s": latency, "loop_wall_s": wall, "effective_concurrency": eff,
                   "ratio": eff / mc, "features_per_hour": 3600 * n / wall, "cpu_s_per_feature": cpu / n,
                   "counts": h.counts}
            rows.append(row)
            print(f"max_concurrency {mc} (features in flight {row['run_concurrency']}): {len(calls)} requests "
                  f"({len(calls) / n:.0f} per feature) in {wall:.0f}s; effective concurrency {eff:.2f}, "
                  f"ratio {eff / mc:.3f}; {row['features_per_hour']:.0f} features/hour; "
                  f"CPU outside the LLM {row['cpu_s_per_feature']:.2f} s per feature; items {h.counts}", flush=True)
    last = rows[-1]
    record("pipeline", {"effective_concurrency": last["effective_concurrency"], "ratio": last["ratio"],
                        "cpu_s_per_feature": last["cpu_s_per_feature"]},
           {"latency_s": args.latency, "runs": rows})
    print(f"effective concurrency: {last['effective_concurrency']:.2f}")
    print(f"ratio: {last['ratio']:.3f}")


def report() -> None:
    """The committed record's figures (`python -m bench pipeline --report`): nothing run."""
    doc = load("pipeline")
    for r in doc["raw"]["runs"]:
        print(f"max_concurrency {r['max_concurrency']}: {r['requests']} requests, effective concurrency "
              f"{r['effective_concurrency']:.2f}, ratio {r['ratio']:.3f}, {r['features_per_hour']:.0f} features/hour, "
              f"CPU outside the LLM {r['cpu_s_per_feature']:.2f} s per feature")
    print(f"effective concurrency: {doc['figures']['effective_concurrency']:.2f}")
    print(f"ratio: {doc['figures']['ratio']:.3f}")


if __name__ == "__main__":
    main()
