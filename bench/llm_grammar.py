"""Grammar-last sampling in the in-process llama.cpp backend: the wall time of real JSON-schema requests, greedy
and sampled, with it and with llama-cpp-python's own sampler chain (the grammar applied to the whole vocabulary at
every token), on the same model object, and whether the texts are the same.

The requests are the store's own: JSON-schema calls to the default model that succeeded (greedy, or sampled with
a seed, so that both ways draw the same random numbers), taken in the order of their request keys (a hash: a draw
that does not favour any stage), one of each kind in turn (a kind: a system prompt, the keys its schema asks for
and the temperature) so that every kind of JSON request in the store is in it. Each is answered twice, each way
first in turn, with llama.cpp's KV cache emptied before every answer (both pay the whole prompt).

    .venv/bin/python bench/llm_grammar.py [--store $SAEXPLAIN_HOME/bench.db] [--requests 24] [--threads 2]

Last line: `grammar_last_speedup: <library chain seconds / grammar-last seconds, summed over the requests>`."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from results import record

from saexplain.llm.base import Request
from saexplain.llm.default import QWEN_FILE, qwen_gguf
from saexplain.llm.inprocess import LlamaCpp
from saexplain.paths import home


def kind(request: dict) -> str:
    """A request's kind, for the printout: the keys its JSON schema asks for, its temperature and the start of its
    system prompt (prompts that start alike — the generation and contrast scorers' — differ in their keys)."""
    keys = ",".join(sorted((request["json_schema"] or {}).get("properties", {})))
    system = str(request["messages"][0][1]) if request["messages"] else ""
    return f"{{{keys}}} T{request['temperature']:g} {system[:40]}"


def load_requests(store: Path, n: int) -> list[tuple[str, Request, str]]:
    """Up to n (kind, request, stored text), spread over the kinds of request."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT request, response FROM llm_calls WHERE model = ? AND error IS NULL AND response IS NOT NULL "
        "AND json_extract(request, '$.json_schema') IS NOT NULL AND (json_extract(request, '$.temperature') = 0 "
        "OR json_extract(request, '$.seed') IS NOT NULL) "
        "AND json_extract(request, '$.n') = 1 GROUP BY request_key ORDER BY request_key", (QWEN_FILE,)).fetchall()
    kinds: dict[str, list[tuple[str, Request, str]]] = {}
    for req, resp in rows:
        d = json.loads(req)
        d["messages"] = tuple(tuple(m) for m in d["messages"]) if d["messages"] is not None else None
        d["stop"] = tuple(d["stop"])
        what = kind(d)
        kinds.setdefault(what, []).append((what, Request(**d), json.loads(resp)["texts"][0]))
    picked: list[tuple[str, Request, str]] = []
    while len(picked) < n and any(kinds.values()):
        for reqs in kinds.values():
            if reqs and len(picked) < n:
                picked.append(reqs.pop(0))
    return picked


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=None, help="default: $SAEXPLAIN_HOME/bench.db")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    store = args.store or home() / "bench.db"
    if not store.is_file():
        sys.exit(f"no store at {store}: restore the benchmarks' store first "
                 "(bench/store_snapshot.py restore) or name one with --store")
    requests = load_requests(store, args.requests)
    if not requests:
        sys.exit(f"{store}: no successful JSON-schema request to {QWEN_FILE} (greedy or seeded) in its llm_calls")
    backend = LlamaCpp(str(qwen_gguf()), 4096, args.threads, False)
    model = backend.llm
    grammar_last = model._init_sampler
    library_chain = type(model)._init_sampler.__get__(model)

    def answer(req: Request, fast: bool):
        model._init_sampler = grammar_last if fast else library_chain
        model.reset()
        comp = backend._generate(req)
        return comp.texts[0], comp.seconds, comp.tokens_in, comp.tokens_out

    answer(requests[0][1], True)  # warm-up (weights into memory)
    rows = []
    for i, (what, req, stored) in enumerate(requests):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {fast: answer(req, fast) for fast in order}
        (ft, fs, tin, tout), (pt, ps, _, _) = got[True], got[False]
        rows.append({"kind": what, "tokens_in": tin, "tokens_out": tout, "grammar_last_s": fs,
                     "library_chain_s": ps, "same_text": ft == pt, "same_as_stored": ft == stored})
        print(f"request {i + 1}/{len(requests)}: {tin} in, {tout} out: grammar-last {fs:.2f} s, library chain "
              f"{ps:.2f} s, same text {ft == pt}, same as the store's {ft == stored}", flush=True)
    fast_s = sum(r["grammar_last_s"] for r in rows)
    plain_s = sum(r["library_chain_s"] for r in rows)
    out = sum(r["tokens_out"] for r in rows)
    same = sum(r["same_text"] for r in rows)
    figures = {"requests": len(rows), "tokens_out": out, "grammar_last_s": fast_s, "library_chain_s": plain_s,
               "grammar_last_tok_s": out / fast_s, "library_chain_tok_s": out / plain_s, "same_text": same,
               "same_as_stored": sum(r["same_as_stored"] for r in rows), "threads": args.threads,
               "grammar_last_speedup": plain_s / fast_s}
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    figures["by_kind"] = {}
    for name, rs in by_kind.items():
        k = {"requests": len(rs), "tokens_in": sum(r["tokens_in"] for r in rs),
             "tokens_out": sum(r["tokens_out"] for r in rs),
             "grammar_last_s": sum(r["grammar_last_s"] for r in rs),
             "library_chain_s": sum(r["library_chain_s"] for r in rs)}
        figures["by_kind"][name] = k
        print(f"{name!r}: {k['requests']} requests, {k['tokens_in']} tokens in, {k['tokens_out']} out: grammar-last "
              f"{k['grammar_last_s']:.1f} s, library chain {k['library_chain_s']:.1f} s "
              f"({k['library_chain_s'] / k['grammar_last_s']:.2f}x)")
    record("llm_grammar", figures, rows)
    print(f"{len(rows)} requests, {out} tokens out: grammar-last {fast_s:.1f} s ({out / fast_s:.1f} tok/s), "
          f"library chain {plain_s:.1f} s ({out / plain_s:.1f} tok/s); same text {same}/{len(rows)}")
    print(f"grammar_last_speedup: {plain_s / fast_s:.2f}")


if __name__ == "__main__":
    main()
