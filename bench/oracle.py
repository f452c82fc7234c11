"""Oracle throughput against the raw truncated forward on the same batches (default Gemma 3 270M + SAE).

Shapes: 64 sentences × ~32 tokens, and 8 texts × ~128 tokens. For each, the raw forward (pre-tokenised,
pre-padded tensors through SubjectModel.hidden) and the full oracle call (tokenise, pad, forward, encode,
split per text) are timed alternately; the ratio is oracle tokens/s ÷ raw tokens/s (median of repeats).
Last line: `ratio: <worse of the two shapes>`.

    .venv/bin/python -m bench oracle [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import load, record
from saexplain.data.corpus import default_corpus, iter_documents
from saexplain.subject.oracle import Oracle, SubjectConfig


def texts_of_length(oracle: Oracle, n: int, length: int) -> list[str]:
    """n corpus snippets of exactly `length` tokens (decoded back to text)."""
    tok = oracle.subject.tokenizer
    out = []
    for doc in iter_documents(default_corpus()):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(tok.decode(ids[:length]))
        if len(out) == n:
            return out
    raise SystemExit(f"corpus has fewer than {n} documents of {length} tokens")


def padded_batches(oracle: Oracle, texts: list[str]):
    tokenized = oracle.subject.tokenize(texts)
    batches = []
    for batch in oracle._batches([len(ids) for ids, _ in tokenized]):
        width = max(len(tokenized[i][0]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(batch):
            ids[r, : len(tokenized[i][0])] = torch.tensor(tokenized[i][0])
            mask[r, : len(tokenized[i][0])] = 1
        batches.append((ids, mask))
    return batches, sum(len(ids) - 1 for ids, _ in tokenized)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    oracle = Oracle.from_config(SubjectConfig())
    print(f"model: {oracle.subject.name}  hookpoint: {oracle.subject.hookpoint.saelens_name}  "
          f"SAE: {oracle.sae.cfg.architecture()} d_sae={oracle.d_sae}  threads={torch.get_num_threads()}")
    ratios, rows = {}, {}
    for name, n, length in (("64x32", 64, 32), ("8x128", 8, 128)):
        texts = texts_of_length(oracle, n, length)
        batches, n_tokens = padded_batches(oracle, texts)
        for ids, mask in batches:  # warm-up
            oracle.subject.hidden(ids, mask)
        oracle.activations(texts)
        raw, full = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for ids, mask in batches:
                oracle.subject.hidden(ids, mask)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            oracle.activations(texts)
            full.append(time.perf_counter() - t)
        r, f = statistics.median(raw), statistics.median(full)
        ratios[name] = r / f
        rows[name] = {"text_tokens": n_tokens, "batches": len(batches), "raw_tok_s": n_tokens / r,
                      "oracle_tok_s": n_tokens / f, "ratio": r / f, "raw_seconds": raw, "oracle_seconds": full}
        print(f"{name}: {n_tokens} text tokens in {len(batches)} batches | raw forward {n_tokens / r:.0f} tok/s | "
              f"oracle {n_tokens / f:.0f} tok/s | ratio {r / f:.3f}")
    record("oracle", {"ratio": min(ratios.values())}, {"shapes": rows, "repeats": args.repeats,
                                                       "threads": torch.get_num_threads()})
    print(f"ratio: {min(ratios.values()):.3f}")


def report() -> None:
    """The committed record's figures (`python -m bench oracle --report`): nothing run."""
    doc = load("oracle")
    for shape, r in doc["raw"]["shapes"].items():
        print(f"{shape} tokens: raw truncated forward {r['raw_tok_s']:.0f} tok/s, oracle {r['oracle_tok_s']:.0f} tok/s, "
              f"ratio {r['ratio']:.3f}")
    print(f"ratio: {doc['figures']['ratio']:.3f}")


if __name__ == "__main__":
    main()
