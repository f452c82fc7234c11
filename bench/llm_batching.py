"""The in-process transformers LLM backend: requests in flight together are generated as one padded batch.
Throughput of N concurrent greedy requests (one batch) against the same N requests one after another, on the
default subject model (Gemma 3 270M, transformers, CPU float32). Texts are checked equal both ways.

    .venv/bin/python bench/llm_batching.py [--requests 8] [--tokens 32]

Last line: `batched / sequential throughput: <ratio>x`."""

from __future__ import annotations

import argparse
import asyncio
import time

from results import record

from saexplain.llm import LLM, LLMConfig
from saexplain.subject.default import default_model_dir

PROMPTS = ["The river flooded the valley after", "In 1905, Einstein published", "My favourite recipe for bread",
           "The stock market fell sharply because", "She opened the old wooden door and", "def fibonacci(n):",
           "The committee decided that the new rules", "Under the microscope, the cells"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    llm = LLM(LLMConfig(llm=f"transformers:{default_model_dir()}", cache=False, max_concurrency=args.requests))
    backend = llm.backend

    async def sequential():
        return [await llm.generate(prompt=p, max_tokens=args.tokens) for p in prompts]

    async def together():
        return await asyncio.gather(*(llm.generate(prompt=p, max_tokens=args.tokens) for p in prompts))

    asyncio.run(llm.generate(prompt="warm up", max_tokens=4))
    rows = {}
    for name, fn in (("sequential", sequential), ("batched", together)):
        backend.batches.clear()
        t = time.perf_counter()
        outs = asyncio.run(fn())
        wall = time.perf_counter() - t
        rows[name] = (wall, sum(o.tokens_out for o in outs), list(backend.batches), [o.text for o in outs])
        print(f"{name}: {len(prompts)} requests, generate() calls of sizes {backend.batches}, {wall:.2f}s, "
              f"{rows[name][1] / wall:.1f} generated tok/s", flush=True)
    same = sum(a == b for a, b in zip(rows["sequential"][3], rows["batched"][3]))
    print(f"texts identical both ways: {same}/{len(prompts)}")
    ratio = (rows["batched"][1] / rows["batched"][0]) / (rows["sequential"][1] / rows["sequential"][0])
    record("llm_batching", {"batched_over_sequential": ratio, "identical_texts": same},
           {name: {"wall_s": r[0], "tokens_out": r[1], "batches": r[2]} for name, r in rows.items()})
    print(f"batched / sequential throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
