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


KILL_CACHE = """
from saexplain.cache.latents import CacheConfig
from saexplain.cache.pipeline import build_cache, default_store_path
from saexplain.data.contexts import CorpusConfig
from saexplain.store import Store
from saexplain.subject.oracle import SubjectConfig
build_cache(SubjectConfig(), CorpusConfig(), CacheConfig(tokens=1_000_000), Store(default_store_path()),
            progress=False)
"""


def test_default_cache_of_the_whole_corpus_survives_sigkill_and_resumes():
    """1M tokens asked; the shared corpus holds about 823k at 64-token contexts, so all of it is cached."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from saexplain.cache.latents import CacheConfig
    from saexplain.cache.pipeline import build_cache, cache_config_json, default_store_path
    from saexplain.data.contexts import CorpusConfig
    from saexplain.paths import home
    from saexplain.store import Store
    from saexplain.subject.oracle import SubjectConfig

    subject, corpus, cfg = SubjectConfig(), CorpusConfig(), CacheConfig(tokens=1_000_000)
    key = hashlib.sha256(json.dumps(cache_config_json(subject, corpus, cfg), sort_keys=True).encode()).hexdigest()[:16]
    path = home() / "caches" / key
    if not (path / "meta.json").is_file() or not json.loads((path / "meta.json").read_text()).get("complete"):
        proc = subprocess.Popen([sys.executable, "-c", KILL_CACHE], env=os.environ)
        deadline = time.time() + 1800
        while time.time() < deadline and len(list(path.glob("shard_*.npz"))) < 3:
            time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = {p.name: p.stat().st_mtime_ns for p in path.glob("shard_*.npz")}
        assert kept and not json.loads((path / "meta.json").read_text())["complete"]
    else:
        kept = {}
    run = build_cache(subject, corpus, cfg, Store(default_store_path()))
    assert run.cache.meta["complete"] and run.cache.n_contexts * run.cache.context > 800_000
    for name, mtime in kept.items():
        assert (path / name).stat().st_mtime_ns == mtime
    ends = [int(p.stem.split("_")[2]) for p in run.cache.shard_paths()]
    assert ends[-1] == run.cache.n_contexts and run.cache.storage()["bytes_per_nonzero"] <= 8
