"""Slow: the real offline default stack (Gemma 3 270M from its PyPI package + the default TopK SAE)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def default_oracle():
    from saexplain.subject.oracle import Oracle, SubjectConfig
    from saexplain.subject.sae import default_sae_dir
    from saexplain.subject.train_sae import TrainSAEConfig, train_sae

    if not (default_sae_dir() / "sae_weights.safetensors").is_file():
        train_sae(TrainSAEConfig())
    return Oracle.from_config(SubjectConfig())


def test_default_stack_probe_and_lens(default_oracle):
    text = "Once upon a time there lived a king who had three daughters."
    (res,) = default_oracle.activations([text])
    assert "".join(res.tokens) == text
    assert default_oracle.subject.d_model == 640 and default_oracle.subject.hookpoint.layer == 6
    assert res.indices.shape == (len(res.tokens), default_oracle.sae.cfg.k)
    assert (res.acts[:, 0] > 0).all(), "a trained TopK SAE has active features on every token"
    f = int(res.indices[3, 0])
    (one,) = default_oracle.activations([text], [f])
    assert one.acts[3, 0] == pytest.approx(float(res.acts[3, 0]), rel=1e-5)
    view = default_oracle.logit_lens(f)
    assert len(view.top) == 10 and view.top[0][1] >= view.bottom[0][1]


def test_default_sae_meets_its_targets():
    from saexplain.subject.sae import default_sae_dir

    metrics = json.loads((default_sae_dir() / "metrics.json").read_text())
    assert metrics["fraction_variance_explained"] >= 0.7
    assert metrics["dead_fraction"] < 0.2
    assert metrics["train_tokens_seen"] >= 1_000_000


def test_truncated_forward_matches_full_forward_on_gemma(default_oracle):
    import torch

    subject = default_oracle.subject
    ids, _ = subject.tokenize(["The stock market fell sharply on Tuesday."])[0]
    with torch.no_grad():
        full = subject.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[7]
    np.testing.assert_allclose(subject.hidden(torch.tensor([ids])).numpy(), full.numpy(), rtol=1e-4, atol=1e-3)
