"""Latent-cache throughput against the raw truncated forward on the same batches, peak RSS at two corpus
sizes (it must stay flat), and bytes per stored non-zero — on the default stack (Gemma 3 270M + default SAE).

    .venv/bin/python -m bench cache [--ratio-tokens 65536] [--rss-tokens 100000 800000]

The RSS runs are separate processes (`python -m bench cache --child N`), each building a fresh cache of N tokens.
The shipped corpus holds fewer than 1M tokens at 64-token contexts, so "1M" is capped there (or --corpus).
Last line: `ratio: <cache tok/s ÷ raw forward tok/s>`."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import load, record


def child(tokens: int) -> None:
    """Build a cache of `tokens` in a fresh $SAEXPLAIN_HOME copy and print its stats as JSON."""
    from saexplain.cache.latents import CacheConfig, LatentCache
    from saexplain.data.contexts import CorpusConfig, build_contexts
    from saexplain.subject.oracle import Oracle, SubjectConfig

    oracle = Oracle.from_config(SubjectConfig())
    ctx = build_contexts(CorpusConfig(), oracle.subject.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = LatentCache.build(oracle, ctx, CacheConfig(tokens=tokens), Path(tmp) / "c", {"bench": tokens},
                                  progress=False)
        seconds = time.perf_counter() - t
        print(json.dumps({"tokens": cache.n_contexts * cache.context, "seconds": seconds,
                          "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          **cache.storage()}))


def ratio(tokens: int, raw_out: dict) -> float:
    from saexplain.cache.latents import CacheConfig, LatentCache
    from saexplain.data.contexts import CorpusConfig, build_contexts
    from saexplain.subject.oracle import Oracle, SubjectConfig

    oracle = Oracle.from_config(SubjectConfig())
    ctx = build_contexts(CorpusConfig(), oracle.subject.tokenizer)
    cfg = CacheConfig(tokens=tokens)
    n_ctx = tokens // ctx.length
    batches = [torch.from_numpy(np.asarray(ctx.tokens[b:min(n_ctx, b + cfg.batch_contexts)], np.int64))
               for b in range(0, n_ctx, cfg.batch_contexts)]
    oracle.subject.hidden(batches[0])  # warm-up
    raw, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):  # alternate, to share the machine's noise
            t = time.perf_counter()
            for b in batches:
                oracle.subject.hidden(b)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            LatentCache.build(oracle, ctx, cfg, Path(tmp) / f"c{rep}", {"rep": rep}, progress=False)
            full.append(time.perf_counter() - t)
    n = n_ctx * ctx.length
    r, f = min(raw), min(full)
    print(f"raw truncated forward: {n / r:.0f} tok/s | cache (forward + SAE + shards): {n / f:.0f} tok/s "
          f"({n} tokens, batches of {cfg.batch_contexts}×{ctx.length}, best of 2)")
    raw_out["ratio"] = {"tokens": n, "raw_seconds": raw, "cache_seconds": full, "raw_tok_s": n / r,
                        "cache_tok_s": n / f}
    return r / f


def delphi_side_by_side(tokens: int, raw_out: dict) -> float | None:
    """EleutherAI delphi's LatentCache (installed with --no-deps) on the same model, SAE, contexts and batch
    size; returns saexplain's throughput ÷ delphi's, or None when delphi cannot be imported."""
    try:
        from delphi.latents import LatentCache as DelphiCache
    except Exception as e:  # noqa: BLE001 - report and skip: delphi is optional here
        print(f"delphi: not importable ({type(e).__name__}: {e}); skipped")
        return None
    from saexplain.cache.latents import CacheConfig, LatentCache
    from saexplain.data.contexts import CorpusConfig, build_contexts
    from saexplain.subject.oracle import Oracle, SubjectConfig

    oracle = Oracle.from_config(SubjectConfig())
    ctx = build_contexts(CorpusConfig(), oracle.subject.tokenizer)
    cfg = CacheConfig(tokens=tokens)
    n_ctx = tokens // ctx.length
    token_tensor = torch.from_numpy(np.asarray(ctx.tokens[:n_ctx], np.int64))
    hook = f"model.layers.{oracle.subject.hookpoint.layer}"
    delphi = DelphiCache(oracle.subject.model, {hook: lambda x: oracle.sae.encode(x)}, batch_size=cfg.batch_contexts)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        LatentCache.build(oracle, ctx, cfg, Path(tmp) / "ours", {"d": 1}, progress=False)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        delphi.run(n_ctx * ctx.length, token_tensor)
        theirs = time.perf_counter() - t
    n = n_ctx * ctx.length
    print(f"delphi LatentCache: {n / theirs:.0f} tok/s | saexplain cache: {n / ours:.0f} tok/s "
          f"({n} tokens) | speed-up {theirs / ours:.2f}x")
    raw_out["delphi"] = {"tokens": n, "delphi_seconds": theirs, "saexplain_seconds": ours,
                         "delphi_tok_s": n / theirs, "saexplain_tok_s": n / ours}
    return theirs / ours


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", type=int)
    ap.add_argument("--ratio-tokens", type=int, default=65_536)
    ap.add_argument("--rss-tokens", type=int, nargs="*", default=[100_000, 800_000])
    ap.add_argument("--delphi-tokens", type=int, default=32_768, help="0 skips the delphi comparison")
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    raw: dict = {"rss": []}
    for n in args.rss_tokens:
        out = subprocess.run([sys.executable, "-m", "bench", "cache", "--child", str(n)], capture_output=True,
                             text=True, env=os.environ, check=True, cwd=Path(__file__).resolve().parent.parent
                             ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        raw["rss"].append(r)
        print(f"{r['tokens']} tokens: {r['tokens'] / r['seconds']:.0f} tok/s, peak RSS {r['max_rss_mb']:.0f} MB, "
              f"{r['nonzeros']:,} non-zeros, {r['bytes_per_nonzero']:.3f} bytes per stored non-zero")
    figures = {}
    if args.delphi_tokens:
        figures["delphi_speedup"] = delphi_side_by_side(args.delphi_tokens, raw)
    figures["ratio"] = ratio(args.ratio_tokens, raw)
    record("cache", figures, raw)
    print(f"ratio: {figures['ratio']:.3f}")


def report() -> None:
    """The committed record's figures (`python -m bench cache --report`): nothing run."""
    doc = load("cache")
    for r in doc["raw"]["rss"]:
        print(f"cache of {r['tokens']:,} tokens: peak RSS {r['max_rss_mb']:.0f} MB, "
              f"{r['bytes_per_nonzero']:.2f} bytes per stored non-zero")
    if doc["figures"].get("delphi_speedup"):
        print(f"delphi_speedup: {doc['figures']['delphi_speedup']:.2f}")
    print(f"ratio: {doc['figures']['ratio']:.3f}")


if __name__ == "__main__":
    main()
