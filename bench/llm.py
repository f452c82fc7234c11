"""The default LLM (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) in process and through llama.cpp's server:
prompt tok/s, generation tok/s, what prompt-prefix KV reuse saves on a growing conversation, and server
throughput at 1/2/4/8 concurrent requests.

    .venv/bin/python -m bench llm [--threads 2]

Last line: `generation: <tok/s in process>`."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import load, record
from saexplain.llm import LLM, LLMConfig
from saexplain.llm.default import qwen_gguf
from saexplain.llm.server import start_llama_server

TEXT = ("Sparse autoencoders decompose a language model's activations into features. Each feature should fire "
        "on one recognisable pattern of the input, such as a word, a topic or a syntactic role. ") * 6


async def timed(llm: LLM, messages, max_tokens: int) -> tuple[float, int, int]:
    t = time.perf_counter()
    comp = await llm.generate(messages, max_tokens=max_tokens, temperature=0.0)
    return time.perf_counter() - t, comp.tokens_in, comp.tokens_out


async def speeds(llm: LLM, tag: str) -> tuple[float, float]:
    """prompt tok/s: a fresh ~300-token prompt answered with one token; generation tok/s: the same prompt again
    (its KV cache is reused, so nearly all the time is generation) answered with up to 96 tokens."""
    msgs = [("user", f"[{tag} {time.time()}] {TEXT}\nSummarise this in one long paragraph.")]
    t1, n_in, _ = await timed(llm, msgs, 1)
    t2, _, n_out = await timed(llm, msgs, 96)
    return n_in / t1, n_out / t2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gguf = qwen_gguf()
    base = dict(cache=False, n_ctx=2048, threads=args.threads, logprobs=False, timeout=600, retries=0)

    # ---- in process
    local = LLM(LLMConfig(llm=f"llamacpp:{gguf}", **base))
    asyncio.run(timed(local, [("user", "Hi")], 1))  # warm-up
    p_local, g_local = asyncio.run(speeds(local, "local"))
    print(f"in process: prompt {p_local:.1f} tok/s, generation {g_local:.1f} tok/s")
    raw: dict = {"in_process": {"prompt_tok_s": p_local, "generation_tok_s": g_local}}

    # ---- prefix reuse on a growing conversation (in process)
    convo = [("system", "You test hypotheses about a feature of a language model."), ("user", TEXT)]
    asyncio.run(timed(local, convo, 8))
    convo2 = convo + [("assistant", "Hypothesis 1: the feature fires on technical vocabulary."),
                      ("user", "Design one probe sentence for hypothesis 1.")]
    t_reuse, n_in, _ = asyncio.run(timed(local, convo2, 1))
    local.backend.llm.reset()  # forget the KV cache: the same prompt from scratch
    t_fresh, _, _ = asyncio.run(timed(local, convo2, 1))
    raw["prefix_reuse"] = {"conversation_tokens": n_in, "with_kv_cache_s": t_reuse, "from_scratch_s": t_fresh}
    print(f"prefix reuse: next turn of a {n_in}-token conversation {t_reuse:.2f}s with the KV cache vs "
          f"{t_fresh:.2f}s from scratch ({t_fresh / t_reuse:.1f}x)")
    del local

    # ---- through llama.cpp's server
    server, url = start_llama_server(gguf, Path(tempfile.mkdtemp()) / "server.log", threads=args.threads)
    try:
        remote = LLM(LLMConfig(llm=f"openai-compatible:{url}#qwen", max_concurrency=8, **base))

        async def against_server():
            await timed(remote, [("user", "Hi")], 1)
            p_srv, g_srv = await speeds(remote, "server")
            raw["server"] = {"prompt_tok_s": p_srv, "generation_tok_s": g_srv, "concurrent": []}
            print(f"server: prompt {p_srv:.1f} tok/s, generation {g_srv:.1f} tok/s "
                  f"(in process ÷ server: prompt {p_local / p_srv:.2f}, generation {g_local / g_srv:.2f})")
            for conc in (1, 2, 4, 8):
                t = time.perf_counter()
                outs = await asyncio.gather(*(timed(remote, [("user", f"Request {i} at {time.time()}: write three "
                                                               "sentences about the sea.")], 48) for i in range(conc)))
                wall = time.perf_counter() - t
                raw["server"]["concurrent"].append({"requests": conc, "wall_s": wall,
                                                    "generated_tokens": sum(o[2] for o in outs),
                                                    "mean_latency_s": sum(o[0] for o in outs) / conc})
                print(f"server, {conc} concurrent requests: {sum(o[2] for o in outs) / wall:.1f} generated tok/s, "
                      f"{conc / wall:.2f} requests/s, {sum(o[0] for o in outs) / conc:.1f}s mean latency")
            await remote.aclose()

        asyncio.run(against_server())
    finally:
        server.terminate()
        server.wait()
    record("llm", {"generation": g_local}, raw)
    print(f"generation: {g_local:.1f}")


def report() -> None:
    """The committed record's figures (`python -m bench llm --report`): nothing run."""
    raw = load("llm")["raw"]
    local, server, reuse = raw["in_process"], raw.get("server") or {}, raw["prefix_reuse"]
    print(f"in process: prompt {local['prompt_tok_s']:.1f} tok/s, generation {local['generation_tok_s']:.1f} tok/s")
    if server:
        print(f"server: prompt {server['prompt_tok_s']:.1f} tok/s, generation {server['generation_tok_s']:.1f} tok/s")
        for c in server.get("concurrent", []):
            print(f"server, {c['requests']} concurrent: {c['generated_tokens'] / c['wall_s']:.1f} generated tok/s")
    print(f"prefix reuse: {reuse['conversation_tokens']}-token conversation, next turn {reuse['with_kv_cache_s']:.2f}s "
          f"with the KV cache vs {reuse['from_scratch_s']:.2f}s from scratch")
    print(f"generation: {local['generation_tok_s']:.1f}")


if __name__ == "__main__":
    main()
