"""Tiny *real* models for the fast suite (saexplain.testing.tiny): a randomly initialised 2-block Gemma-3
(d_model 64) with a BPE tokenizer trained here, and SAEs of each architecture written by sae-lens itself (or in
sparsify's format). TEST_DATA: the suite's own corpus files (tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saexplain.testing.tiny import (  # noqa: F401  (re-exported)
    D_MODEL,
    D_SAE,
    GROUND_TRUTH_WORD,
    make_saelens_sae,
    write_ground_truth_sae,
    write_tiny_model,
)

TEST_DATA = Path(__file__).resolve().parent / "data"

SENTENCES = [
    "The cat sat on the mat.",
    "Once upon a time there lived a king who had three daughters.",
    "Stocks fell sharply on Tuesday as investors worried about rates.",
    "ROMEO: But soft, what light through yonder window breaks?",
    "a",
    "  leading spaces and   double spaces  ",
]


@pytest.fixture(autouse=True)
def _isolated_home(request, monkeypatch, tmp_path_factory):
    """Fast tests never touch the user's $SAEXPLAIN_HOME; slow tests use it (the converted default model and
    the trained default SAE live there)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "slow" not in request.keywords:
        monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path_factory.getbasetemp() / "saexplain_home"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_gemma3"))


@pytest.fixture(scope="session")
def tiny_subject(tiny_model_dir):
    from saexplain.subject.model import SubjectModel, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    return SubjectModel(model, tok, "blocks.0.hook_resid_post", name=str(tiny_model_dir))


@pytest.fixture(scope="session")
def sae_folders(tmp_path_factory) -> dict[str, Path]:
    """One folder per (format, architecture), written by sae-lens (SAELens) or by hand (sparsify)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("saes")
    out = {}
    for arch in ("standard", "jumprelu", "topk"):
        out[arch] = root / arch
        make_saelens_sae(arch).save_model(out[arch])
    out["standard-normrescale"] = root / "standard-normrescale"
    make_saelens_sae("standard", normalize_activations="constant_norm_rescale").save_model(out["standard-normrescale"])
    out["topk-norescale"] = root / "topk-norescale"
    make_saelens_sae("topk", rescale_acts_by_decoder_norm=False).save_model(out["topk-norescale"])
    # sparsify layout: <run>/layers.0/{cfg.json, sae.safetensors}; encoder.weight is [d_sae, d_in]
    g = torch.Generator().manual_seed(2)
    sp = root / "sparsify_run" / "layers.0"
    sp.mkdir(parents=True)
    (sp / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 1, "normalize_decoder": True,
                                             "num_latents": D_SAE, "k": 8, "multi_topk": False,
                                             "skip_connection": False, "transcode": False, "d_in": D_MODEL}))
    save_file({"encoder.weight": torch.randn(D_SAE, D_MODEL, generator=g) / 8,
               "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
               "W_dec": torch.randn(D_SAE, D_MODEL, generator=g),
               "b_dec": torch.randn(D_MODEL, generator=g) * 0.3}, sp / "sae.safetensors")
    out["sparsify"] = sp
    return out




@pytest.fixture(scope="session")
def ground_truth(tiny_model_dir, tmp_path_factory) -> dict:
    return write_ground_truth_sae(tiny_model_dir, tmp_path_factory.mktemp("ground_truth_sae"))
