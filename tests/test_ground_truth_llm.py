"""Ground truth with the real default LLM (slow): on the tiny model, an SAE whose feature 0 fires on exactly
one token ("▁wife") — the explanation naming the token must beat a wrong one on generation and detection, and
SAGE (and the one-shot baseline) must reach an explanation that names the token."""

from __future__ import annotations

import asyncio

import pytest

from conftest import TEST_DATA
from saexplain.cache.latents import CacheConfig
from saexplain.data.contexts import CorpusConfig
from saexplain.explain import EXPLAINERS
from saexplain.explain.sage import SAGEConfig
from saexplain.llm import LLM, LLMConfig
from saexplain.pipeline.runner import RunConfig, StageConfigs, prepare
from saexplain.sampling.sampler import SamplingConfig
from saexplain.score.classifier import Detection, DetectionConfig
from saexplain.score.generative import Generation, GenerationConfig
from saexplain.store import Store
from saexplain.subject.oracle import Oracle, SubjectConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(ground_truth, tmp_path_factory):
    home = tmp_path_factory.mktemp("gt_home")
    corpus = home / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    cfgs = StageConfigs(
        run=RunConfig(features="0"),
        subject=SubjectConfig(model=str(ground_truth["model"]), sae=str(ground_truth["sae"])),
        corpus=CorpusConfig(corpus=[str(corpus)], context=48), cache=CacheConfig(tokens=30_000),
        sampling=SamplingConfig(window=16))
    store = Store(home / "s.db")
    oracle = Oracle.from_config(cfgs.subject)
    h = prepare(cfgs, store, oracle, features=[0], echo=lambda m: None)
    from saexplain.llm.default import qwen_gguf

    qwen_gguf()  # the default GGUF must be assembled (make setup-llm)
    llm = LLM(LLMConfig(cache=False))
    return {"record": h.records[0], "oracle": oracle, "llm": llm}


def test_true_explanation_beats_a_wrong_one_with_the_default_llm(setup):
    rec, oracle, llm = setup["record"], setup["oracle"], setup["llm"]
    gen = Generation(GenerationConfig(sentences=6))
    det = Detection(DetectionConfig(activating=6, random_negatives=3, hard_negatives=3))
    good, wrong = 'the word "wife"', "descriptions of the weather and the sky"
    g_good = asyncio.run(gen.score(rec, good, llm, oracle))
    g_wrong = asyncio.run(gen.score(rec, wrong, llm, oracle))
    d_good = asyncio.run(det.score(rec, good, llm, oracle))
    d_wrong = asyncio.run(det.score(rec, wrong, llm, oracle))
    assert g_good.value > g_wrong.value, (g_good.details, g_wrong.details)
    assert d_good.details["auroc"] > d_wrong.details["auroc"], (d_good.details, d_wrong.details)


@pytest.mark.parametrize("method", ["sage", "oneshot"])
def test_the_default_llm_names_the_token(setup, method):
    rec, oracle, llm = setup["record"], setup["oracle"], setup["llm"]
    cls = EXPLAINERS.get(method)
    explainer = cls(SAGEConfig(selection="none")) if method == "sage" else cls()
    exp = asyncio.run(explainer.explain(rec, llm, oracle))
    named = [exp.description] + exp.labels
    assert any("wife" in t.lower() for t in named), (exp.description, exp.labels, exp.evidence)
