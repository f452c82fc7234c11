"""Fixed-length token contexts, stored once per (corpus, tokenizer, context length, BOS or not).

Documents are tokenised one by one (each followed by a blank line), concatenated, and cut into contexts of
`context - 1` text tokens after BOS — or `context` text tokens without BOS, for SAEs trained without one
(`prepend_bos: false`), so that the cache sees what the oracle sees. For every token we keep the document it came from and its character
span, so any window of any context can show its text and its source.

Folder layout (arrays are .npy, memory-mapped on read):
  tokens.npy [n_ctx, L] int32 · doc.npy [n_ctx, L] int32 (−1 for BOS) · span.npy [n_ctx, L, 2] int32
  docs.jsonl (doc_id, text) · meta.json (config, tokenizer, counts; written last = complete)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.data.corpus import READER_VERSION, ReadStats, default_corpus, iter_documents
from saexplain.errors import SaexplainError
from saexplain.fingerprint import path_fingerprint
from saexplain.locks import exclusive
from saexplain.paths import home

SEPARATOR = "\n\n"


class CorpusConfig(Config):
    cli_name: ClassVar[str] = "corpus"
    corpus: list[str] = Field(default_factory=list,
                              description="files/folders (txt, csv, jsonl, parquet) or hf:<dataset>[:split]; "
                                          "default: the public-domain texts shipped with saexplain")
    text_column: str | None = Field(None, description="text column (csv/jsonl/parquet/hf)")
    context: int = Field(64, ge=4, description="tokens per context, BOS first")

    def sources(self) -> list[str]:
        return list(self.corpus) or default_corpus()

    def fingerprint(self) -> str:
        """Changes when a source's content changes or the config does (not when files are merely copied)."""
        parts = [self.to_json(), f"readers v{READER_VERSION}"] + [path_fingerprint(src) for src in self.sources()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(json.dumps(sorted(vocab.items())[:5000]).encode())
    h.update(f"{len(vocab)}:{tokenizer.bos_token_id}:{type(tokenizer).__name__}".encode())
    return h.hexdigest()[:16]


@dataclass
class Contexts:
    """A stored, tokenised corpus. Arrays are memory-mapped."""

    path: Path
    tokens: np.ndarray
    doc: np.ndarray
    span: np.ndarray
    meta: dict

    @classmethod
    def open(cls, path: Path) -> Contexts:
        if not (path / "meta.json").is_file():
            raise SaexplainError(f"no complete tokenised corpus in {path}")
        return cls(path, np.load(path / "tokens.npy", mmap_mode="r"), np.load(path / "doc.npy", mmap_mode="r"),
                   np.load(path / "span.npy", mmap_mode="r"), json.loads((path / "meta.json").read_text()))

    @property
    def bos(self) -> bool:
        """Whether every context starts with BOS (position 0 is then no text token)."""
        return bool(self.meta.get("bos", True))

    @property
    def n_contexts(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    def doc_texts(self) -> list[tuple[str, str]]:
        if not hasattr(self, "_docs"):
            with open(self.path / "docs.jsonl") as f:
                self._docs = [tuple(json.loads(line)) for line in f]
        return self._docs

    def window(self, context: int, start: int, end: int) -> tuple[list[str], list[str]]:
        """(display strings, doc ids) of tokens [start, end) of a context; BOS shows as ''."""
        docs = self.doc_texts()
        strings, sources = [], []
        for d, (a, b) in zip(self.doc[context, start:end], self.span[context, start:end]):
            if d < 0:
                strings.append("")
                sources.append("")
            else:
                doc_id, text = docs[int(d)]
                strings.append(text[a:b])
                sources.append(doc_id)
        return strings, sources


def build_contexts(cfg: CorpusConfig, tokenizer, max_tokens: int | None = None, bos: bool = True,
                   progress: bool = False) -> Contexts:
    """Tokenise the corpus into contexts (or reuse the stored ones for the same corpus + tokenizer + length);
    `bos`: every context starts with BOS (as the SAE's `prepend_bos` says the model saw in training)."""
    key = hashlib.sha256(f"{cfg.fingerprint()}:{tokenizer_fingerprint(tokenizer)}:{max_tokens}"
                         f"{'' if bos else ':no-bos'}".encode()).hexdigest()[:16]
    path = home() / "corpora" / key
    if (path / "meta.json").is_file():
        return Contexts.open(path)
    with exclusive(path.with_name(key + ".lock"), "this tokenised corpus"):
        if (path / "meta.json").is_file():  # another process finished it while we waited
            return Contexts.open(path)
        for stale in path.parent.glob(key + ".tmp*"):  # left by a killed writer (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        return _build_contexts(cfg, tokenizer, max_tokens, path, bos, progress)


def _build_contexts(cfg: CorpusConfig, tokenizer, max_tokens: int | None, path: Path, bos: bool,
                    progress: bool = False) -> Contexts:
    from tqdm.auto import tqdm

    if bos and tokenizer.bos_token_id is None:
        raise SaexplainError("the tokenizer has no BOS token; contexts start with BOS")
    body = cfg.context - 1 if bos else cfg.context
    stats = ReadStats()
    ids: list[int] = []
    docs_idx: list[int] = []
    spans: list[tuple[int, int]] = []
    docs: list[tuple[str, str]] = []
    limit = None if max_tokens is None else (max_tokens // cfg.context) * body
    with tqdm(total=limit, unit="tok", unit_scale=True, desc="tokenising the corpus", disable=not progress) as bar:
        for doc in iter_documents(cfg.sources(), cfg.text_column, stats):
            text = doc.text + SEPARATOR
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            n = len(enc["input_ids"])
            if n == 0:
                continue
            bar.update(n if limit is None else min(n, max(0, limit - len(ids))))
            starts = [s for s, _ in enc["offset_mapping"]] + [len(text)]
            d = len(docs)
            docs.append((doc.doc_id, text))
            ids += enc["input_ids"]
            docs_idx += [d] * n
            # a token's span runs to the next token's start, so spaces are kept in the display strings
            spans += [(s, max(e, starts[i + 1])) for i, (s, e) in enumerate(enc["offset_mapping"])]
            if limit is not None and len(ids) >= limit:
                break
    n_ctx = len(ids) // body if limit is None else min(len(ids), limit) // body
    if n_ctx == 0:
        raise SaexplainError(f"corpus too small: {len(ids)} tokens, fewer than one context of {cfg.context}")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = np.asarray(ids[: n_ctx * body], dtype=np.int32).reshape(n_ctx, body)
    dd = np.asarray(docs_idx[: n_ctx * body], dtype=np.int32).reshape(n_ctx, body)
    sp = np.asarray(spans[: n_ctx * body], dtype=np.int32).reshape(n_ctx, body, 2)
    used_docs = int(dd.max()) + 1
    if bos:
        t = np.concatenate([np.full((n_ctx, 1), tokenizer.bos_token_id, np.int32), t], 1)
        dd = np.concatenate([np.full((n_ctx, 1), -1, np.int32), dd], 1)
        sp = np.concatenate([np.zeros((n_ctx, 1, 2), np.int32), sp], 1)
    np.save(tmp / "tokens.npy", t)
    np.save(tmp / "doc.npy", dd)
    np.save(tmp / "span.npy", sp)
    with open(tmp / "docs.jsonl", "w") as f:
        for doc_id, text in docs[:used_docs]:
            f.write(json.dumps([doc_id, text]) + "\n")
    meta = {"config": json.loads(cfg.to_json()), "tokenizer": tokenizer_fingerprint(tokenizer),
            "n_contexts": n_ctx, "context": cfg.context, "tokens": n_ctx * cfg.context,
            "documents": used_docs, "replaced_bytes": stats.replaced_bytes, "max_tokens": max_tokens, "bos": bos}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return Contexts.open(path)
