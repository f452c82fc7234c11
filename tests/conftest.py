"""The fast suite's shared fixtures and helpers (no test module imports another): tiny *real* models
(saexplain.testing.tiny: a randomly initialised 2-block Gemma-3 with a BPE tokenizer trained here, SAEs of each
architecture written by sae-lens itself or in sparsify's format, the ground-truth SAE), run configs on it, the
scorers' and SAGE's helpers, and TEST_DATA: the suite's own corpus files (tests/data/README.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from saexplain.cache.latents import CacheConfig
from saexplain.data.contexts import CorpusConfig
from saexplain.explain.sage import SAGEConfig
from saexplain.llm.client import LLMConfig
from saexplain.pipeline.runner import RunConfig, StageConfigs, prepare
from saexplain.sampling.record import FeatureRecord, Window
from saexplain.sampling.sampler import SamplingConfig
from saexplain.score import SCORERS
from saexplain.score.simulation import SimulationConfig
from saexplain.store import Store
from saexplain.subject.oracle import Oracle, SubjectConfig
from saexplain.testing.scripted import scripted_llm
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


# ------------------------------------------------------------------ shared by several test modules
def tiny_configs(ground_truth, corpus: Path, tokens: int = 30_000, sage: str = "none", **run) -> StageConfigs:
    """A run's configs on the ground-truth SAE over `corpus` (48-token contexts, 16-token windows, simulation
    without logprobs); `run` sets RunConfig fields (features "0,1" unless given)."""
    return StageConfigs(
        run=RunConfig(**{"features": "0,1", **run}),
        subject=SubjectConfig(model=str(ground_truth["model"]), sae=str(ground_truth["sae"])),
        corpus=CorpusConfig(corpus=[str(corpus)], context=48), cache=CacheConfig(tokens=tokens),
        sampling=SamplingConfig(window=16), sage=SAGEConfig(selection=sage),
        simulation=SimulationConfig(logprobs=False))


@pytest.fixture()
def cfgs(ground_truth, tmp_path):
    corpus = tmp_path / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    return tiny_configs(ground_truth, corpus, explainers="oneshot,sage", scorers="detection,generation,simulation",
                        store=str(tmp_path / "store.db"))


@pytest.fixture(scope="module")
def wife(ground_truth):
    """The oracle of the ground-truth SAE (feature 0 fires on "wife" only)."""
    oracle = Oracle.from_config(SubjectConfig(model=str(ground_truth["model"]), sae=str(ground_truth["sae"])))
    return oracle


def make_record(oracle, texts: list[str], feature: int = 0) -> FeatureRecord:
    """A record whose explain pool holds the given texts (measured by the oracle) plus silent negatives."""
    windows = []
    for i, res in enumerate(oracle.activations(texts, [feature])):
        windows.append(Window(res.tokens, res.feature(feature), "explain", "top", i))
    for i, res in enumerate(oracle.activations(["The river ran.", "A bird sang."], [feature])):
        windows.append(Window(res.tokens, res.feature(feature), "explain", "random", i))
    top = max(w.max_act for w in windows)
    return FeatureRecord(feature, top, 0.01, [], windows)


GOOD = 'the word "wife"'
WRONG = 'the word "sea"'


@pytest.fixture(scope="module")
def gt(ground_truth, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("gt_corpus") / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    cfgs = tiny_configs(ground_truth, corpus, explainers="oneshot", scorers="detection")
    store = Store(tmp_path_factory.mktemp("gt_store") / "s.db")
    oracle = Oracle.from_config(cfgs.subject)
    h = prepare(cfgs, store, oracle, features=[0, 1], echo=lambda m: None)
    return {"handle": h, "store": store, "oracle": oracle, "record": h.records[0], **ground_truth}


def score(name, cfg, record, explanation, handler, oracle):
    llm, backend = scripted_llm(handler)
    res = asyncio.run(SCORERS.get(name)(cfg).score(record, explanation, llm, oracle))
    return res, backend


def with_run(cfgs, llm: LLMConfig | None = None, **run):
    d = dict(cfgs.__dict__)
    d["run"] = RunConfig(**{**cfgs.run.model_dump(), **run})
    if llm is not None:
        d["llm"] = llm
    return StageConfigs(**d)


def stored_results(store: str):
    """A run's explanations and scores as sortable tuples (to compare two runs' stores)."""
    with Store(store) as db:
        (run,) = db.runs("run")
        exps = sorted((e["feature"], e["method"], e["status"], e["description"], tuple(e["labels"]))
                      for e in db.explanations(run["id"]))
        scores = sorted((s["feature"], s["method"], s["scorer"], s["status"],
                         None if s["value"] is None else round(s["value"], 6)) for s in db.scores(run["id"]))
    return exps, scores


def margin(lm, prompt: str, chosen: str, rejected: str, vector) -> float:
    from saexplain.train.dpo import pair_margins

    return pair_margins(lm, [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "feature": 0}],
                        {0: vector}, 128)[0]
