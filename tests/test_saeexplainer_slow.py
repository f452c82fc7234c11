"""SAEExplainer on the real default stack (slow): Gemma 3 270M as the explainer model with the default SAE's
decoder vectors injected at <unused0>; one DPO step on two real pairs raises the chosen-minus-rejected margin
(about 30 s per step of 2 pairs on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import margin
from saexplain.explain.saeexplainer import ExplainerLM, SAEExplainerConfig
from saexplain.subject.sae import load_sae
from saexplain.train.config import TrainConfig
from saexplain.train.dpo import train_dpo

pytestmark = pytest.mark.slow


def test_real_gemma_dpo_step_with_injected_decoder_vectors(tmp_path):
    from datasets import Dataset

    lm = ExplainerLM.load(SAEExplainerConfig())  # default: Gemma 3 270M, <unused0>, block 1
    sae = load_sae("default")
    vec = {f: sae.W_dec[f].detach().clone() for f in (10, 20)}
    prompt = lm.prompt()
    rows = [{"prompt": prompt, "chosen": " sports scores and results", "rejected": " the letter Y", "feature": 10},
            {"prompt": prompt, "chosen": " names of cities", "rejected": " given text", "feature": 20}]
    before = [margin(lm, prompt, r["chosen"], r["rejected"], vec[r["feature"]]) for r in rows]
    # the injected vector reaches the output: the two features' next-token distributions differ
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    outs = []
    for f in (10, 20):
        lm.injector.vectors = vec[f]
        with torch.no_grad():
            outs.append(lm.model(input_ids=ids).logits[0, -1])
    lm.injector.vectors = None
    assert not torch.allclose(outs[0], outs[1])
    train_dpo(lm, Dataset.from_list(rows), vec, TrainConfig(lr1=1e-4, dpo_batch=2), 1, tmp_path / "r1", max_steps=1)
    after = [margin(lm, prompt, r["chosen"], r["rejected"], vec[r["feature"]]) for r in rows]
    assert sum(after) > sum(before), (before, after)
    assert json.loads((tmp_path / "r1" / "dpo_log.json").read_text())[0]["step"] == 1
