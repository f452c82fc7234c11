"""SAEExplainer on the tiny model: the injection hook, the pair rules, one DPO step, SFT resume, and the whole
train → evaluate loop (rewards from a ScriptedLLM — canned texts, named as such; it tests plumbing and
arithmetic, not explanation quality)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import zlib

import numpy as np
import pytest
import torch

from conftest import TEST_DATA, margin
from saexplain.cache.latents import CacheConfig
from saexplain.data.contexts import CorpusConfig
from saexplain.errors import ConfigError, SaexplainError
from saexplain.explain.saeexplainer import ExplainerLM, SAEExplainerConfig
from saexplain.llm import LLM, LLMConfig
from saexplain.llm.prompts import template
from saexplain.pipeline.runner import RunConfig, StageConfigs, run_all
from saexplain.sampling.sampler import SamplingConfig
from saexplain.score import generative
from saexplain.store import Store
from saexplain.subject.model import find_layers
from saexplain.subject.oracle import SubjectConfig
from saexplain.testing.scripted import ScriptedBackend, last_user, scripted_llm
from saexplain.train.config import TrainConfig
from saexplain.train.data import Candidate, build_pairs, corpus_reward, references_from_neuronpedia, reward
from saexplain.train.dpo import train_dpo
from saexplain.train.sft import train_sft

PLACEHOLDER = "wife"  # one token of the tiny tokenizer, not elsewhere in the prompt


def _lm(model_dir, **kw) -> ExplainerLM:
    kw.setdefault("block", 0)  # the tiny model has 2 blocks: inject after the first
    return ExplainerLM.load(SAEExplainerConfig(model=str(model_dir), placeholder=PLACEHOLDER, **kw))


def _block_output(lm: ExplainerLM, ids: torch.Tensor, block: int) -> torch.Tensor:
    seen = {}
    h = find_layers(lm.model)[block].register_forward_hook(
        lambda m, a, out: seen.__setitem__("h", (out[0] if isinstance(out, tuple) else out).detach().clone()))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits
    finally:
        h.remove()
    return seen["h"], logits


def test_injection_changes_exactly_the_placeholder_residual_by_the_configured_amount(tiny_model_dir):
    lm = _lm(tiny_model_dir, block=0, scale=0.5)
    ids = lm.tokenizer(lm.prompt(), return_tensors="pt")["input_ids"]
    (pos,) = (ids[0] == lm.placeholder_id).nonzero()[:, 0].tolist()
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)) * 7.0
    clean, clean_logits = _block_output(lm, ids, 0)
    lm.injector.vectors = v
    try:
        hit, hit_logits = _block_output(lm, ids, 0)
    finally:
        lm.injector.vectors = None
    delta = hit[0] - clean[0]
    others = torch.ones(ids.shape[1], dtype=torch.bool)
    others[pos] = False
    assert torch.equal(hit[0, others], clean[0, others])  # nothing else moves at the injection block
    expected = 0.5 * clean[0, pos].norm() * v / v.norm()
    torch.testing.assert_close(delta[pos], expected, rtol=1e-5, atol=1e-5)
    # causal: logits before the placeholder are unchanged, those after it see the feature
    torch.testing.assert_close(hit_logits[0, :pos], clean_logits[0, :pos])
    assert not torch.allclose(hit_logits[0, pos:], clean_logits[0, pos:])
    # without vectors the hook is inert
    again, _ = _block_output(lm, ids, 0)
    assert torch.equal(again, clean)


def test_injection_errors_are_one_line(tiny_model_dir):
    with pytest.raises(ConfigError, match="tokens for this tokenizer"):
        ExplainerLM.load(SAEExplainerConfig(model=str(tiny_model_dir), placeholder="king", block=0))
    lm = _lm(tiny_model_dir)
    with pytest.raises(ConfigError, match="do not fit the explainer"):
        lm.generate([lm.prompt()], torch.zeros(640), max_new_tokens=4)
    with pytest.raises(ConfigError, match="out of range"):
        _lm(tiny_model_dir, block=1)  # the last block: nothing after the placeholder could read the vector


def test_generation_uses_one_vector_per_prompt(tiny_model_dir):
    lm = _lm(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, lm.d_model, generator=g)
    outs = lm.generate([lm.prompt()] * 2, v, n=3, max_new_tokens=4)
    assert [len(o) for o in outs] == [3, 3]
    # routing: in a batch, row i gets vector i — its logits equal a run alone with that vector, and differ
    ids = lm.tokenizer([lm.prompt()] * 2, return_tensors="pt")["input_ids"]

    def last_logits(vectors, rows):
        lm.injector.vectors = vectors
        try:
            with torch.no_grad():
                return lm.model(input_ids=ids[:rows]).logits[:, -1]
        finally:
            lm.injector.vectors = None

    both = last_logits(v, 2)
    torch.testing.assert_close(both[0], last_logits(v[0], 1)[0])
    torch.testing.assert_close(both[1], last_logits(v[1], 1)[0])
    assert not torch.allclose(both[0], both[1])


def _cands(*rewards):
    return [Candidate(f"c{i}", r) for i, r in enumerate(rewards)]


def _first(feature, candidates, cfg, noise=None):
    """The feature's first pair (or None) and the reason, as a round with one pair per feature builds it."""
    pairs, why = build_pairs(feature, candidates, cfg.model_copy(update={"pairs_per_feature": 1}), noise)
    return (pairs[0] if pairs else None), why


def test_pair_rules_on_hand_made_scores():
    cfg = TrainConfig(min_reward=0.1, min_spread=0.10, min_margin=0.15)
    pair, why = _first(7, _cands(0.9, 0.8, 0.7, 0.6, 0.5, 0.2), cfg)
    assert (pair.chosen, pair.rejected, why) == ("c0", "c3", "ok")  # best of the lower half (0.6 trails 0.9 by 33 %)
    assert (pair.chosen_reward, pair.rejected_reward) == (0.9, 0.6)
    pair, _ = _first(7, _cands(1.0, 0.95, 0.9, 0.88, 0.5, 0.4), cfg)
    assert pair.rejected == "c4"  # 0.88 trails by only 12 %: the next one of the lower half
    assert _first(7, _cands(0.05, 0.0, 0.0, 0.0, 0.0, 0.0), cfg)[0] is None  # best below the threshold
    pair, why = _first(7, _cands(0.9, 0.88, 0.86, 0.85, 0.84, 0.82), cfg)
    assert pair is None and why.startswith("spread")  # (0.9 − 0.82) / 0.9 = 8.9 % ≤ 10 %
    pair, why = _first(7, _cands(1.0, 0.95, 0.93, 0.9, 0.88, 0.87), cfg)
    assert pair is None and "trails" in why  # spread 13 %, but the lower half trails by 10–13 % only
    assert _first(7, [Candidate("a", 0.9), Candidate("b", None, error="x")], cfg)[0] is None


def test_noise_aware_pairs_need_a_gap_beyond_the_measured_reward_noise():
    """With repeats, the reward is a mean and its noise is measured; a pair needs chosen − rejected > k σ √(2/R)."""
    import asyncio

    from saexplain.train.data import reward, reward_noise

    class FakeOracle:  # a FAKE oracle: the feature's value on a text is the number written in it
        async def aactivations(self, texts, features):
            class R:
                def __init__(self, t):
                    self.v = float(t.split()[-1])

                def max(self, f):
                    return self.v
            return [R(t) for t in texts]

    seen = []

    def writer(req):
        seen.append((req.temperature, req.seed))
        return json.dumps({"texts": [f"text {2 + (req.seed or 0)}", "text 1"]})

    llm, _ = scripted_llm(writer)
    c = asyncio.run(reward("cand", 0, 10.0, llm, FakeOracle(), 2, repeats=3))
    assert seen == [(0.7, 0), (0.7, 1), (0.7, 2)]  # sampled, one seed per repeat
    assert c.rewards == [0.2, 0.3, 0.4] and c.reward == pytest.approx(0.3) and c.raw == pytest.approx(3.0)
    assert reward_noise([c, Candidate("x", 0.5, rewards=[0.5])]) == pytest.approx(0.1)  # one-set candidates add nothing
    assert reward_noise([Candidate("x", 0.5)]) is None
    cfg = TrainConfig(reward_repeats=4, min_gap_sigmas=2.0, min_spread=0.0)
    gap = 2.0 * 0.1 * (2 / 4) ** 0.5  # 0.141
    pair, why = _first(7, _cands(0.9, 0.85, 0.8, 0.78), cfg, noise=0.1)
    assert pair is None and "σ of the noise" in why  # 0.9 − 0.8 = 0.10 is within the noise
    pair, _ = _first(7, _cands(0.9, 0.85, 0.8, 0.7), cfg, noise=0.1)
    assert pair.rejected == "c3" and 0.9 - 0.7 > gap
    # without a noise measure the relative margin rule applies (0.8 trails 0.9 by 11 % < 15 %; 0.78 by 13 %)
    assert _first(7, _cands(0.9, 0.85, 0.8, 0.78), TrainConfig(min_spread=0.0))[0] is None


def test_several_pairs_per_feature_pair_distinct_texts_beyond_the_margin():
    cfg = TrainConfig(min_reward=0.1, min_spread=0.10, min_margin=0.15, pairs_per_feature=3)
    # upper half c0..c3 (0.9, 0.8, 0.7, 0.6), lower half c4..c7 (0.55, 0.5, 0.3, 0.2)
    pairs, why = build_pairs(7, _cands(0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.2), cfg)
    assert why == "ok" and [(p.chosen, p.rejected) for p in pairs] == [("c0", "c4"), ("c1", "c5"), ("c2", "c6")]
    assert _first(7, _cands(0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.2), cfg)[0] == pairs[0]  # the first is the one
    # each chosen text takes the closest unused lower-half one beyond the margin: c2 (0.62) skips c6 (0.54, 13 %
    # behind) for c7; c3 (0.60) has none left beyond it, and one further down would not either
    pairs, _ = build_pairs(7, _cands(1.0, 0.9, 0.62, 0.6, 0.58, 0.55, 0.54, 0.1),
                           cfg.model_copy(update={"pairs_per_feature": 9}))
    assert [(p.chosen, p.rejected) for p in pairs] == [("c0", "c4"), ("c1", "c5"), ("c2", "c7")]
    # a text sampled several times is one candidate (one pair at most); b trails a by only 11 %
    dup = [Candidate("a", 0.9), Candidate("a", 0.9), Candidate("a", 0.9), Candidate("b", 0.8), Candidate("c", 0.4),
           Candidate("d", 0.3)]
    pairs, _ = build_pairs(7, dup, cfg)
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "c")]
    # a noise gap the second-best cannot clear gives the best's pair only
    cfg_n = cfg.model_copy(update={"reward_repeats": 2, "min_gap_sigmas": 2.0, "min_spread": 0.0})
    pairs, _ = build_pairs(7, _cands(0.9, 0.5, 0.45, 0.4), cfg_n, noise=0.1)  # gap 0.2: 0.5 − 0.4 is not enough
    assert [(p.chosen, p.rejected) for p in pairs] == [("c0", "c2")]
    assert build_pairs(7, _cands(0.9, 0.88, 0.86, 0.85), cfg) == ([], "spread 0.056 ≤ 0.1")


def test_greedy_text_takes_the_first_pair_kept_when_good_moved_from_when_bad():
    """`greedy_rounds`: the policy's greedy text (what the evaluation reads) joins the candidates and takes the
    feature's first pair — chosen from the upper half, rejected from the lower half; the rest follow the rules."""
    cfg = TrainConfig(min_reward=0.1, min_spread=0.10, min_margin=0.15, pairs_per_feature=2)
    cands = _cands(0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.2)  # c0..c7
    # in the upper half (0.75): chosen against the closest lower-half text beyond 15 % (c4: 0.55 trails by 27 %)
    pairs, why = build_pairs(7, cands, cfg, greedy=Candidate("g", 0.75))
    assert why == "ok" and [(p.chosen, p.rejected) for p in pairs] == [("g", "c4"), ("c0", "c5")]
    # in the lower half (0.25): rejected against the best that beats it; the next pair is c1's
    pairs, _ = build_pairs(7, cands, cfg, greedy=Candidate("g", 0.25))
    assert [(p.chosen, p.rejected) for p in pairs] == [("c0", "g"), ("c1", "c5")]
    # a greedy text sampled too is that candidate (one text, one pair), here c0: the best, so the same pairs
    assert build_pairs(7, cands, cfg, greedy=Candidate("c0", 0.9)) == build_pairs(7, cands, cfg)
    # a greedy text whose reward failed takes no pair; with one pair per feature, the greedy one is that pair
    assert build_pairs(7, cands, cfg, greedy=Candidate("g", None, error="x")) == build_pairs(7, cands, cfg)
    one = cfg.model_copy(update={"pairs_per_feature": 1})
    assert [(p.chosen, p.rejected) for p in build_pairs(7, cands, one, greedy=Candidate("g", 0.25))[0]] == [
        ("c0", "g")]
    # a greedy text in the upper half (0.52 of c0 .9, c1 .85, g, c2 .5, c3 .45) that no lower-half text trails by
    # the margin takes no pair: the usual pairs follow
    pairs, _ = build_pairs(7, _cands(0.9, 0.85, 0.5, 0.45), cfg, greedy=Candidate("g", 0.52))
    assert [(p.chosen, p.rejected) for p in pairs] == [("c0", "c2"), ("c1", "c3")]
    assert TrainConfig(greedy_rounds="2, 1").greedy_rounds == "1,2" and TrainConfig(greedy_rounds="2").greedy_in(2)
    assert not TrainConfig().greedy_in(1)
    with pytest.raises(ConfigError, match="greedy_rounds.*rounds 1 and/or 2"):
        TrainConfig.build(greedy_rounds="3")


def test_rewards_summary_counts_failed_greedy_rewards_and_leaves_empty_candidates_out_of_the_failures():
    """pairs.json's "rewards": a failed reward of a greedy text that no candidate sampled is a failed reward of the
    round (counted once, also under "greedy"); an empty candidate is "empty", not "failed"."""
    from dataclasses import asdict

    from saexplain.train.data import EMPTY, Pair, rewards_summary

    def row(text, reward, error=None):
        return asdict(Candidate(text, reward, error=error))

    lines = [
        {"feature": 1, "candidates": [row("a", 0.8), row("b", 0.2), row("", None, EMPTY)],
         "greedy": row("g", None, "LLMParseError: no JSON object found")},  # a greedy text of its own, failed
        {"feature": 2, "candidates": [row("c", None, "timeout"), row("d", 0.5)],
         "greedy": row("c", None, "timeout")},  # sampled too: the same failure, counted once
        {"feature": 3, "candidates": [row("e", 0.0), row("f", 0.6)], "greedy": row("f", 0.6)}]
    pairs = [Pair(3, "f", "e", 0.6, 0.0), Pair(1, "a", "b", 0.8, 0.2)]
    s = rewards_summary(lines, pairs, greedy=True)
    assert (s["candidates"], s["nonzero"], s["failed"], s["empty"]) == (5, 4, 2, 1)
    assert s["mean_reward"] == pytest.approx(2.1 / 5) and s["features_rewarded"] == 3
    assert s["greedy"] == {"features": 3, "rewarded": 1, "mean_reward": 0.6, "failed": 2, "chosen": 1,
                           "rejected": 0, "sampled_too": 2}
    # without greedy texts in the round, its greedy lines' extra text is none of its business
    plain = rewards_summary(lines, pairs, greedy=False)
    assert plain["failed"] == 1 and "greedy" not in plain


def test_set_reward_max_and_share_on_hand_made_activations():
    from saexplain.train.data import measured, remeasure, set_reward

    acts = [0.0, 9.0, 4.0, 5.0]  # the feature's max activation on each of 4 texts; its corpus max is 10
    assert set_reward(acts, 10.0, "max", 0.5) == pytest.approx(0.9)  # one text near the max: nearly full reward
    assert set_reward(acts, 10.0, "share", 0.5) == 0.5  # 9 and 5 reach half the max, 0 and 4 do not
    assert set_reward(acts, 10.0, "share", 0.3) == 0.75
    assert set_reward(acts, 0.0, "share", 0.5) == set_reward([], 10.0, "max", 0.5) == 0.0
    c = measured("x", [["a", "b"], ["c", "d"]], [[10.0, 0.0], [2.0, 1.0]], 10.0, "share", 0.5)
    assert (c.reward, c.rewards, c.raw, c.texts) == (0.25, [0.5, 0.0], 6.0, ["a", "b", "c", "d"])
    # the same stored texts measured again under 'max': no LLM, the activations given per text
    acts = {"a": 10.0, "b": 0.0, "c": 2.0, "d": 1.0}
    m = remeasure(c, acts, 10.0, 2, 2, "max", 0.5)
    assert (m.reward, m.rewards, m.texts) == (pytest.approx(0.6), [1.0, 0.2], c.texts)
    failed = Candidate("y", error="timeout")
    assert remeasure(failed, acts, 10.0, 2, 2, "max", 0.5) is failed  # retried by the next run, as it was
    short = remeasure(Candidate("z", 0.5, 1.0, ["a", "b", "c"], rewards=[0.5]), acts, 10.0, 2, 2, "max", 0.5)
    assert short.reward is None and short.error == "stored reward texts: 3, not 2 × 2"


def test_reuse_tells_same_candidates_from_remeasured_from_other():
    from saexplain.train.pipeline import _candidates_differ

    llm = {"reward_source": "llm", "reward_fraction": 0.5}
    # 'llm' takes the max: a fraction it does not read leaves the candidates as they are (a plain copy)
    assert _candidates_differ(llm, {**llm, "reward_fraction": 0.3}) is None
    assert _candidates_differ({}, llm) is None  # a saved config without the settings ran with the defaults
    # the same texts measured another way: re-measured
    assert _candidates_differ(llm, {**llm, "reward_source": "share"}) == "measure"
    assert _candidates_differ({"reward_source": "share", "reward_fraction": 0.5},
                              {"reward_source": "share", "reward_fraction": 0.3}) == "measure"
    # other texts or candidates: only the SFT model is reused
    assert _candidates_differ(llm, {**llm, "reward_source": "corpus"}) == "other"
    # the generation scorer's texts come from another prompt: not the 'llm'/'share' texts measured again
    assert _candidates_differ({**llm, "reward_source": "share"}, {**llm, "reward_source": "generation"}) == "other"
    assert _candidates_differ(llm, {**llm, "reward_source": "share", "reward_repeats": 3}) == "other"
    assert _candidates_differ(llm, {**llm, "candidates": 12}) == "other"


def test_training_page_shows_the_pairs_from_the_rounds_record(tmp_path):
    """The page reads what a round trained on (pairs/ and pairs.json's drop reasons), never a recomputation: a round
    still rewarding shows its candidates and says so; a dataset left from an earlier build is not shown as this
    round's; a candidates file copied from a folder with more pair features shows none of the others."""
    from saexplain.train.data import Pair, save_pairs
    from saexplain.web.read import training_rounds

    folder = tmp_path / "t"
    sub = {"model": "m", "sae": "s"}
    (folder / "config.json").parent.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"subject": sub, "training": {"pair_features": 1}}))
    (folder / "split.json").write_text(json.dumps({"train": [5, 6], "heldout": []}))  # the seeded draw picks 5

    def row(f):
        return {"feature": f, "candidates": [{"text": f"c{i}", "reward": x} for i, x in enumerate((0.9, 0.5, 0.1))]}
    for rnd in (1, 2):
        (folder / f"round{rnd}").mkdir()
        (folder / f"round{rnd}" / "candidates.jsonl").write_text(json.dumps(row(5)) + "\n" + json.dumps(row(6)))
    cfgs = [{"saeexplainer": {"train_dir": str(folder)}, "subject": sub}]
    r1, r2 = training_rounds(cfgs, 5)
    assert [c.text for c in r1.candidates] == ["c0", "c1", "c2"] and r1.pairs == []
    assert "not built yet" in r1.pair_reason
    # round 1 trained on c1 over c2 (whatever rules made it: the page shows the record, not the best candidate)
    save_pairs([Pair(5, "c1", "c2", 0.5, 0.1)], {5: "prompt"}, folder / "round1" / "pairs")
    (folder / "round1" / "pairs.json").write_text(json.dumps({"pairs": 1, "dropped": {}}))
    (folder / "round2" / "pairs.json").write_text(json.dumps({"pairs": 0, "dropped": {"5": "spread 0.05 ≤ 0.1"}}))
    r1, r2 = training_rounds(cfgs, 5)
    assert [(p.chosen, p.rejected) for p in r1.pairs] == [("c1", "c2")] and r1.pair_reason == "ok"
    assert r2.pairs == [] and r2.pair_reason == "spread 0.05 ≤ 0.1"
    # pairs.json rewritten by a later build that counts 2 pairs, the dataset still the earlier one's
    (folder / "round1" / "pairs.json").write_text(json.dumps({"pairs": 2, "dropped": {}}))
    r1, _ = training_rounds(cfgs, 5)
    assert r1.pairs == [] and "holds 1 pairs, pairs.json counts 2" in r1.pair_reason
    (folder / "round1" / "pairs.json").write_text("{")
    assert "does not read" in training_rounds(cfgs, 5)[0].pair_reason
    assert training_rounds(cfgs, 6) == []  # not a pair feature of this folder
    assert "texts an LLM wrote" in r2.reward  # the folder predates reward_source: the LLM reward
    (folder / "config.json").write_text(json.dumps({"subject": sub, "training": {"pair_features": 1,
                                                                                "reward_source": "corpus"}}))
    assert all("corpus reward" in r.reward for r in training_rounds(cfgs, 5))
    (folder / "config.json").write_text(json.dumps({"subject": sub, "training": {
        "pair_features": 1, "reward_source": "share", "reward_fraction": 0.25}}))
    assert all("share of the texts an LLM wrote" in r.reward and "0.25 × its max" in r.reward
               for r in training_rounds(cfgs, 5))
    (folder / "config.json").write_text(json.dumps({"subject": sub, "training": {
        "pair_features": 1, "reward_source": "generation", "reward_texts": 10}}))
    assert all("generation score: the share of the 10 sentences" in r.reward for r in training_rounds(cfgs, 5))
    # rounds on unseen features: the page finds their candidates though the feature is no training feature
    (folder / "config.json").write_text(json.dumps({"subject": sub, "training": {
        "pair_features": 1, "dpo_features": "unseen"}}))
    assert training_rounds(cfgs, 5) == []  # a split from before the unseen pool: no round feature to show
    (folder / "split.json").write_text(json.dumps({"train": [1, 2], "heldout": [], "unseen": [5, 6]}))
    assert [r.round for r in training_rounds(cfgs, 5)] == [1, 2] and training_rounds(cfgs, 1) == []
    # a round with greedy texts (`greedy_rounds`): the model's own text is shown among the candidates, marked; one
    # that was also sampled is that candidate, marked
    g_row = {**row(5), "greedy": {"text": "g", "reward": 0.7}}
    (folder / "round2" / "candidates.jsonl").write_text(json.dumps(g_row) + "\n")
    (folder / "round1" / "candidates.jsonl").write_text(json.dumps({**row(5), "greedy": {"text": "c1",
                                                                                        "reward": 0.5}}) + "\n")
    r1, r2 = training_rounds(cfgs, 5)
    assert [(c.text, c.greedy) for c in r2.candidates] == [("c0", False), ("g", True), ("c1", False), ("c2", False)]
    assert [(c.text, c.greedy) for c in r1.candidates] == [("c0", False), ("c1", True), ("c2", False)]


def test_neuronpedia_export_is_read_and_bad_files_are_one_line(tmp_path):
    p = tmp_path / "np.json"
    p.write_text(json.dumps([{"modelId": "gemma", "index": "3", "description": " fish "},
                             {"index": 3, "description": "second"}, {"feature": 5, "explanation": "birds"},
                             {"index": 9, "description": "not wanted"}]))
    assert references_from_neuronpedia(p, [3, 5, 6]) == {3: "fish", 5: "birds"}
    p.write_text('[{"index": 3}]')
    with pytest.raises(ConfigError, match="entry 0 has no"):
        references_from_neuronpedia(p, [3])
    with pytest.raises(ConfigError, match="not found"):
        references_from_neuronpedia(tmp_path / "missing.json", [3])


def test_one_dpo_step_raises_the_chosen_minus_rejected_margin(tiny_model_dir, tmp_path):
    from datasets import Dataset

    lm = _lm(tiny_model_dir)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    prompt, chosen, rejected = lm.prompt(), " the king and his wife", " stocks fell sharply"
    before = margin(lm, prompt, chosen, rejected, vec)
    pairs = Dataset.from_list([{"prompt": prompt, "chosen": chosen, "rejected": rejected, "feature": 4}] * 2)
    cfg = TrainConfig(dpo_batch=2, lr1=5e-3, lora_dropout=0.0)
    adapter = train_dpo(lm, pairs, {4: vec}, cfg, 1, tmp_path / "round1", max_steps=1)
    assert (adapter / "adapter_config.json").is_file()
    log = json.loads((tmp_path / "round1" / "dpo_log.json").read_text())
    assert log[0]["step"] == 1
    after = margin(lm, prompt, chosen, rejected, vec)  # lm.model now carries the trained adapter
    assert after > before + 1e-3, (before, after)


def test_dpo_presets_paper_and_lora_and_an_option_given_apart_wins():
    paper, lora = TrainConfig(), TrainConfig(dpo_preset="lora")
    assert (paper.dpo_epochs, paper.lr1, paper.lr2, paper.dpo_holdout) == (1, 5e-6, 3e-6, 0.0)
    assert (lora.dpo_epochs, lora.lr1, lora.lr2, lora.dpo_holdout) == (4, 5e-5, 3e-5, 0.2)
    mixed = TrainConfig.build(dpo_preset="lora", dpo_epochs=1, lr1=5e-6)
    assert (mixed.dpo_epochs, mixed.lr1, mixed.lr2) == (1, 5e-6, 3e-5)
    assert json.loads(paper.to_json())["lr1"] == 5e-6  # a stored config holds the values, not the preset's name only


def test_dpo_early_stopping_keeps_the_previous_stage_when_the_held_out_margin_falls(tiny_model_dir, tmp_path):
    """The held-out feature's pair prefers the opposite of what the training pairs teach: the first epoch lowers
    its margin, so training stops there and the kept adapter is epoch 0's (the previous stage, a zero adapter) —
    the held-out pair's margin after the round equals its margin before. Held-out pairs are never trained on."""
    from datasets import Dataset

    from saexplain.train.dpo import split_holdout

    lm = _lm(tiny_model_dir)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    prompt, a, b = lm.prompt(), " the king and his wife", " stocks fell sharply"
    cfg = TrainConfig(dpo_preset="lora", dpo_batch=2, lr1=5e-3, lora_dropout=0.0, dpo_epochs=3, dpo_holdout=0.25,
                      save_steps=1000)
    features = [1, 2, 3, 4]
    probe = Dataset.from_list([{"prompt": prompt, "chosen": a, "rejected": b, "feature": f} for f in features])
    _, held_rows = split_holdout(probe, cfg.dpo_holdout, cfg.train_seed + 1)
    (held,) = {r["feature"] for r in held_rows}
    rows = [{"prompt": prompt, "chosen": b if f == held else a, "rejected": a if f == held else b, "feature": f}
            for f in features for _ in range(2)]
    trained, kept = split_holdout(Dataset.from_list(rows), cfg.dpo_holdout, cfg.train_seed + 1)
    assert held not in set(trained["feature"]) and {r["feature"] for r in kept} == {held}
    before = margin(lm, prompt, b, a, vec)
    adapter = train_dpo(lm, Dataset.from_list(rows), dict.fromkeys(features, vec), cfg, 1, tmp_path / "round1")
    state = json.loads((tmp_path / "round1" / "early_stop.json").read_text())
    assert [e["epoch"] for e in state["epochs"]] == [0, 1] and state["stopped_after_epoch"] == 1
    assert state["epochs"][1]["heldout_margin"] < state["epochs"][0]["heldout_margin"]
    assert state["best_epoch"] == 0 and state["heldout_pairs"] == 2
    assert margin(lm, prompt, b, a, vec) < before  # the model in memory learnt the training pairs' preference …
    fresh = _lm(tiny_model_dir)
    from peft import PeftModel

    kept_model = PeftModel.from_pretrained(fresh.model, str(adapter))
    fresh.model = kept_model
    assert margin(fresh, prompt, b, a, vec) == pytest.approx(before, abs=1e-4)  # … the kept adapter did not


def test_dpo_reward_check_decides_the_kept_epoch_instead_of_held_out_pairs(tiny_model_dir, tmp_path):
    """With a check (the reward check's shape: lm → {"value", …}), every pair is trained on and the check's value
    picks the epoch: a check that falls after epoch 1 keeps epoch 0 (a zero adapter: the margin is the previous
    stage's) although the pairs were learnt; the check's other fields are stored with each epoch."""
    from datasets import Dataset
    from peft import PeftModel

    lm = _lm(tiny_model_dir)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    prompt, a, b = lm.prompt(), " the king and his wife", " stocks fell sharply"
    cfg = TrainConfig(dpo_preset="lora", dpo_batch=2, lr1=5e-3, lora_dropout=0.0, dpo_epochs=3, dpo_holdout=0.0,
                      save_steps=1000)
    rows = [{"prompt": prompt, "chosen": a, "rejected": b, "feature": f} for f in (1, 2) for _ in range(2)]
    before = margin(lm, prompt, a, b, vec)
    values, seen = iter([0.5, 0.2, 0.9]), []

    def check(model_lm):
        seen.append(model_lm is lm and not model_lm.model.training)  # the policy being trained, in eval mode
        return {"value": next(values), "texts": ["x"]}

    adapter = train_dpo(lm, Dataset.from_list(rows), dict.fromkeys((1, 2), vec), cfg, 1, tmp_path / "r1",
                        check=check)
    state = json.loads((tmp_path / "r1" / "early_stop.json").read_text())
    assert state["check"] == "check_reward" and state["heldout_pairs"] == 0 and seen == [True, True]
    assert [(e["epoch"], e["check_reward"], e["texts"]) for e in state["epochs"]] == [(0, 0.5, ["x"]),
                                                                                       (1, 0.2, ["x"])]
    assert state["best_epoch"] == 0 and state["stopped_after_epoch"] == 1
    assert margin(lm, prompt, a, b, vec) > before  # the pairs were learnt …
    fresh = _lm(tiny_model_dir)
    fresh.model = PeftModel.from_pretrained(fresh.model, str(adapter))
    assert margin(fresh, prompt, a, b, vec) == pytest.approx(before, abs=1e-4)  # … the kept epoch is 0


def test_dpo_early_stopping_keeps_the_best_epoch_when_the_held_out_pairs_agree(tiny_model_dir, tmp_path):
    """Held-out pairs that agree with the training pairs: their margin rises, the kept adapter is the best epoch's
    (not epoch 0), and the margin after the round is that epoch's."""
    from datasets import Dataset
    from peft import PeftModel

    lm = _lm(tiny_model_dir)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    prompt, a, b = lm.prompt(), " the king and his wife", " stocks fell sharply"
    cfg = TrainConfig(dpo_preset="lora", dpo_batch=2, lr1=2e-3, lora_dropout=0.0, dpo_epochs=2, dpo_holdout=0.25,
                      save_steps=1000)
    rows = [{"prompt": prompt, "chosen": a, "rejected": b, "feature": f} for f in (1, 2, 3, 4) for _ in range(2)]
    before = margin(lm, prompt, a, b, vec)
    adapter = train_dpo(lm, Dataset.from_list(rows), dict.fromkeys((1, 2, 3, 4), vec), cfg, 1, tmp_path / "r1")
    state = json.loads((tmp_path / "r1" / "early_stop.json").read_text())
    margins = [e["heldout_margin"] for e in state["epochs"]]
    assert [e["epoch"] for e in state["epochs"]] == [0, 1, 2] and margins[1] > margins[0]
    assert state["best_epoch"] == max(range(3), key=lambda i: margins[i]) >= 1
    fresh = _lm(tiny_model_dir)
    fresh.model = PeftModel.from_pretrained(fresh.model, str(adapter))
    kept = margin(fresh, prompt, a, b, vec)
    assert kept == pytest.approx(margins[state["best_epoch"]], abs=1e-4) and kept > before


def test_killed_sft_resumes_from_its_checkpoint_to_the_same_weights(tiny_model_dir, tmp_path):
    from peft import get_peft_model_state_dict

    rows = [{"feature": f, "prompt": "Feature: wife Description:", "completion": f" pattern {f}"} for f in range(6)]
    g = torch.Generator().manual_seed(0)
    vectors = {f: torch.randn(64, generator=g) for f in range(6)}
    cfg = TrainConfig(sft_epochs=2, sft_batch=2, save_steps=1, sft_lr=1e-3)  # 6 steps, dropout on

    whole = _lm(tiny_model_dir)
    train_sft(whole, rows, vectors, cfg, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_at_4(step, total, loss):
        if step == 4:
            raise Killed

    first = _lm(tiny_model_dir)
    with pytest.raises(Killed):
        train_sft(first, rows, vectors, cfg, tmp_path / "killed", on_step=kill_at_4)
    assert not (tmp_path / "killed" / "adapter").exists()
    steps = []
    second = _lm(tiny_model_dir)  # a fresh process: the model is reloaded
    train_sft(second, rows, vectors, cfg, tmp_path / "killed", on_step=lambda s, n, loss: steps.append(s))
    assert steps == [5, 6]  # resumed after step 4, nothing redone
    from peft import PeftModel

    a = get_peft_model_state_dict(PeftModel.from_pretrained(_lm(tiny_model_dir).model, str(tmp_path / "whole" / "adapter")))
    b = get_peft_model_state_dict(PeftModel.from_pretrained(_lm(tiny_model_dir).model, str(tmp_path / "killed" / "adapter")))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# ------------------------------------------------------------------------------ the whole loop, tiny
def _stages(ground_truth, tmp_path, saex: SAEExplainerConfig | None = None, **run) -> StageConfigs:
    corpus = tmp_path / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    return StageConfigs(
        run=RunConfig(store=str(tmp_path / "store.db"), **run),
        subject=SubjectConfig(model=str(ground_truth["model"]), sae=str(ground_truth["sae"])),
        corpus=CorpusConfig(corpus=[str(corpus)], context=48), cache=CacheConfig(tokens=30_000),
        sampling=SamplingConfig(window=16),
        saeexplainer=saex or SAEExplainerConfig(model=str(ground_truth["model"]), placeholder=PLACEHOLDER,
                                                block=0, max_new_tokens=8))


def reward_writer(req):
    """ScriptedLLM writer: texts that contain "the" for some candidates and not for others (by a hash of the
    candidate), so that candidates get different rewards on feature 1 (fires on "▁the")."""
    cand = last_user(req).split("Description: ", 1)[1].split("\n", 1)[0]
    word = "the" if zlib.crc32(cand.encode()) % 2 else "a"
    return json.dumps({"texts": [f"Once {word} king walked into {word} old forest at night."] * 4})


def test_train_loop_end_to_end_then_evaluate_on_held_out_features(ground_truth, tmp_path):
    from datasets import load_from_disk

    from saexplain.train.pipeline import Training

    # a held-out evaluation run on feature 0 (one-shot, ScriptedLLM), as a user would have
    held = _stages(ground_truth, tmp_path, features="0", explainers="oneshot", scorers="")
    backend = ScriptedBackend(lambda req: json.dumps({"explanation": "the word wife"}))
    h = run_all(held, echo=lambda m: None, backend=backend)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"index": f, "description": f"the word {w}"} for f, w in
                                [(0, "wife"), (1, "the"), (2, "king"), (3, "forest")]]))
    stages = _stages(ground_truth, tmp_path, explainers="", scorers="")
    cfg = TrainConfig(dir=str(tmp_path / "train"), features="0,1,2", heldout_runs=str(h.run_id),
                      references=str(refs), sft_epochs=1, sft_batch=2, lora_dropout=0.0, min_reward=0.05)
    with pytest.raises(ConfigError, match=r"\[0\] are held out"):
        Training(cfg, stages, echo=lambda m: None)
    cfg = cfg.model_copy(update={"features": "1,2,3,4"})
    t = Training(cfg, stages, echo=lambda m: None)
    assert 0 in t.heldout and 0 not in t.features
    t.sft()
    llm, writer = scripted_llm(reward_writer)
    t.pairs(1, llm)
    summary = json.loads((tmp_path / "train" / "round1" / "pairs.json").read_text())
    pairs = load_from_disk(str(tmp_path / "train" / "round1" / "pairs"))
    assert summary["pairs"] == len(pairs) >= 1 and summary["failed"] == 0
    assert summary["features_with_pairs"] == len(set(pairs["feature"])) == 4 - len(summary["dropped"])
    assert set(pairs["feature"]) <= set(t.features) and all(c > r for c, r in zip(pairs["chosen_reward"], pairs["rejected_reward"]))
    rows = [json.loads(x) for x in (tmp_path / "train" / "round1" / "candidates.jsonl").read_text().splitlines()]
    assert {r["feature"] for r in rows} == {1, 2, 3, 4} and all(len(r["candidates"]) == 6 for r in rows)
    calls = len(writer.requests)
    log = (tmp_path / "train" / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", x) for x in log)
    assert any(re.fullmatch(r"\S+ \S+ training folder .*: 4 training features, 1 held out", x) for x in log)
    assert any(re.fullmatch(rf"\S+ \S+ round 1: {summary['pairs']} pairs from .*", x) for x in log)
    t.pairs(1, scripted_llm(reward_writer)[0])  # resumed: every feature is done, no new reward call
    assert calls == sum(len({c["text"] for c in r["candidates"]}) for r in rows)
    # the folder's log keeps every invocation's messages, the resumed one's after the first's
    again = (tmp_path / "train" / "train.log").read_text().splitlines()
    assert again[:len(log)] == log and len(again) > len(log) and "round 1:" in again[-1]
    # the resumed invocation did no feature: pairs.json still reports the first one's time, feature by feature
    summary = json.loads((tmp_path / "train" / "round1" / "pairs.json").read_text())
    assert summary["features_timed"] == 4 and summary["seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert all(r["seconds"] > 0 for r in rows)
    # a failed reward is retried by the next invocation, alone: the feature's other candidates keep their rewards
    cand_path = tmp_path / "train" / "round1" / "candidates.jsonl"
    lines = cand_path.read_text().splitlines()
    broken = json.loads(lines[0])
    lost = broken["candidates"][0]["text"]
    for c in broken["candidates"]:
        if c["text"] == lost:
            c.update(reward=None, raw=None, texts=[], rewards=[], error="LLMParseError: no JSON object found")
    cand_path.write_text("\n".join([json.dumps(broken), *lines[1:]]) + "\n")
    llm_r, writer_r = scripted_llm(reward_writer)
    t.pairs(1, llm_r)
    assert len(writer_r.requests) == 1 and f"Description: {lost}\n" in last_user(writer_r.requests[0])
    retried = [json.loads(x) for x in cand_path.read_text().splitlines()][-1]
    assert retried["feature"] == broken["feature"] and retried["candidates"] == rows[0]["candidates"]
    t.dpo(1, max_steps=1)
    # DPO trained on the round's pairs: they are its record; a later invocation retries nothing and keeps them
    record = {p.name: p.read_bytes() for p in (tmp_path / "train" / "round1").glob("pairs*") if p.is_file()}
    record |= {p.name: p.read_bytes() for p in (tmp_path / "train" / "round1" / "pairs").iterdir()}
    cand_path.write_text(cand_path.read_text() + json.dumps(broken) + "\n")  # a failure left in the record
    llm_s, writer_s = scripted_llm(reward_writer)
    assert t.pairs(1, llm_s) == tmp_path / "train" / "round1" / "pairs" and writer_s.requests == []
    assert record == {p.name: p.read_bytes() for p in (tmp_path / "train" / "round1").glob("pairs*") if p.is_file()} | {
        p.name: p.read_bytes() for p in (tmp_path / "train" / "round1" / "pairs").iterdir()}
    cand_path.write_text("".join(x + "\n" for x in cand_path.read_text().splitlines()[:-1]))
    margins = json.loads((tmp_path / "train" / "round1" / "margins.json").read_text())
    summary = json.loads((tmp_path / "train" / "round1" / "pairs.json").read_text())
    n_pairs = summary["pairs"]
    cands = [c for r in rows for c in r["candidates"] if c["reward"] is not None]
    assert summary["rewards"]["candidates"] == len(cands)
    assert summary["rewards"]["nonzero"] == sum(c["reward"] > 0 for c in cands)
    assert margins["pairs"] == n_pairs == len(margins["before"]) == len(margins["after"])
    assert margins["before"] != margins["after"]  # "after" is the round-1 model, not the SFT model again
    (tmp_path / "train" / "round1" / "margins.json").unlink()
    t.dpo(1)  # already trained: not trained again, but its margins are measured again, identically
    again = json.loads((tmp_path / "train" / "round1" / "margins.json").read_text())
    assert again["before"] == pytest.approx(margins["before"]) and again["after"] == pytest.approx(margins["after"])
    t.pairs(2, scripted_llm(reward_writer)[0])
    t.dpo(2, max_steps=1)
    t.close()
    # --greedy-rounds 2 (and another round-2 beta) on a folder whose round 1 this one shares: --reuse copies SFT,
    # round 1's record and round 2's candidates; round 2 adds each pair feature's greedy text of the round-1 model
    # (what the evaluation would read), rewarded once — a text sampled too is not asked again
    tg = Training(cfg.model_copy(update={"dir": str(tmp_path / "train_g"), "greedy_rounds": "2", "beta2": 0.3}),
                  stages, echo=lambda m: None)
    assert tg.reuse(tmp_path / "train") == ["sft", "round1", "round2/candidates.jsonl"]
    assert (tmp_path / "train_g" / "round1" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "train" / "round1" / "adapter" / "adapter_model.safetensors").read_bytes()
    llm_g, writer_g = scripted_llm(reward_writer)
    tg.pairs(2, llm_g)
    rows_g = {r["feature"]: r for r in map(json.loads, (tmp_path / "train_g" / "round2" / "candidates.jsonl")
                                           .read_text().splitlines())}  # the last line of each feature
    r1 = tg.policy("round1")
    vecs = tg.vectors()
    for f, r in rows_g.items():
        assert r["greedy"]["text"] == r1.generate([tg.prompt(r1, f)], vecs[f], n=1, temperature=0.0,
                                                  max_new_tokens=tg.explainer.max_new_tokens)[0][0]
    new_texts = [r["greedy"]["text"] for r in rows_g.values()
                 if r["greedy"]["text"] not in {c["text"] for c in r["candidates"]}]
    assert len(writer_g.requests) == len(new_texts) and all(r["greedy"]["reward"] is not None
                                                            for r in rows_g.values())
    g_sum = json.loads((tmp_path / "train_g" / "round2" / "pairs.json").read_text())["rewards"]["greedy"]
    assert g_sum["features"] == g_sum["rewarded"] == 4 and g_sum["sampled_too"] == 4 - len(new_texts)
    pairs_g = load_from_disk(str(tmp_path / "train_g" / "round2" / "pairs"))
    took = sum(" " + rows_g[f]["greedy"]["text"] in (c, j) for f, c, j in
               zip(pairs_g["feature"], pairs_g["chosen"], pairs_g["rejected"]))
    assert took == g_sum["chosen"] + g_sum["rejected"] >= 1
    llm_g2, writer_g2 = scripted_llm(reward_writer)
    tg.pairs(2, llm_g2)  # resumed: every greedy text has its reward, nothing is asked again
    assert writer_g2.requests == []
    tg.close()
    # a folder restored with its own round-2 candidates (a snapshot without SFT and round 1): --reuse brings SFT and
    # round 1 back and keeps its candidates (greedy texts and all)
    (tmp_path / "train_g3" / "round2").mkdir(parents=True)
    for name in ("split.json", "round2/candidates.jsonl"):
        shutil.copyfile(tmp_path / "train_g" / name, tmp_path / "train_g3" / name)
    tg3 = Training(cfg.model_copy(update={"dir": str(tmp_path / "train_g3"), "greedy_rounds": "2", "beta2": 0.3}),
                   stages, echo=lambda m: None)
    assert tg3.reuse(tmp_path / "train") == ["sft", "round1"]
    assert (tmp_path / "train_g3" / "round2" / "candidates.jsonl").read_bytes() == (
        tmp_path / "train_g" / "round2" / "candidates.jsonl").read_bytes()
    tg3.close()
    # greedy texts in round 1 too: round 1 differs, so only SFT and round 1's sampled candidates are copied
    tg1 = Training(cfg.model_copy(update={"dir": str(tmp_path / "train_g1"), "greedy_rounds": "1,2"}), stages,
                   echo=lambda m: None)
    assert tg1.reuse(tmp_path / "train") == ["sft", "round1/candidates.jsonl"]
    tg1.close()
    assert all((tmp_path / "train" / s / "adapter" / "adapter_config.json").is_file()
               for s in ("sft", "round1", "round2"))
    # another setting in the same folder is refused, not silently mixed
    with pytest.raises(ConfigError, match="was started with training.candidates=6"):
        Training(cfg.model_copy(update={"candidates": 4}), stages, echo=lambda m: None)
    # … but a setting this folder's config does not read is no other setting: the 'llm' reward takes the max
    Training(cfg.model_copy(update={"reward_fraction": 0.25, "dpo_check_features": 3}), stages,
             echo=lambda m: None).close()
    with pytest.raises(ConfigError, match="was started with training.dpo_check='margin'"):
        Training(cfg.model_copy(update={"dpo_check": "reward"}), stages, echo=lambda m: None)
    # other pair rules on the same candidates: --reuse copies the SFT model and round 1's candidates; no reward call
    train3 = tmp_path / "train3"
    t3 = Training(cfg.model_copy(update={"dir": str(train3), "pairs_per_feature": 3}), stages, echo=lambda m: None)
    assert t3.reuse(tmp_path / "train") == ["sft", "round1/candidates.jsonl"]
    assert t3.reuse(tmp_path / "train") == []  # it has its own now: nothing is replaced
    assert t3.sft() == train3 / "sft" / "adapter"  # trained already: not again
    llm3, writer3 = scripted_llm(reward_writer)
    t3.pairs(1, llm3)
    assert writer3.requests == []
    pairs3 = load_from_disk(str(train3 / "round1" / "pairs"))
    assert len(pairs3) >= n_pairs and set(pairs3["feature"]) == set(pairs["feature"])
    firsts = {}
    for f, c, r in zip(pairs3["feature"], pairs3["chosen"], pairs3["rejected"]):
        firsts.setdefault(f, (c, r))
    assert firsts == {f: (c, r) for f, c, r in zip(pairs["feature"], pairs["chosen"], pairs["rejected"])}
    t3.close()
    # fewer (or more) pair features: their candidates are the same feature by feature; only missing ones are paid
    t5 = Training(cfg.model_copy(update={"dir": str(tmp_path / "train5"), "pair_features": 2}), stages,
                  echo=lambda m: None)
    assert t5.reuse(tmp_path / "train") == ["sft", "round1/candidates.jsonl"]
    llm5, writer5 = scripted_llm(reward_writer)
    t5.pairs(1, llm5)
    assert writer5.requests == [] and json.loads((tmp_path / "train5" / "round1" / "pairs.json").read_text())[
        "rewards"]["features_rewarded"] == 2
    t5.close()
    # a folder restored from a snapshot without its SFT model (its split and own round-1 candidates): --reuse
    # brings SFT back and keeps its candidates — here 2 features' against the other folder's 4
    (tmp_path / "train5b" / "round1").mkdir(parents=True)
    for name in ("split.json", "round1/candidates.jsonl"):
        shutil.copyfile(tmp_path / "train5" / name, tmp_path / "train5b" / name)
    t5b = Training(cfg.model_copy(update={"dir": str(tmp_path / "train5b"), "pair_features": 2}), stages,
                   echo=lambda m: None)
    assert t5b.reuse(tmp_path / "train") == ["sft"]
    assert (tmp_path / "train5b" / "round1" / "candidates.jsonl").read_bytes() == (
        tmp_path / "train5" / "round1" / "candidates.jsonl").read_bytes()
    t5b.close()
    # DPO's reward check: after each epoch, the greedy explanations of training features outside the pair
    # features (what the evaluation would write), rewarded as the candidates are; every pair is trained on
    chk = cfg.model_copy(update={"dir": str(tmp_path / "train9"), "pair_features": 2, "dpo_check": "reward",
                                 "dpo_check_features": 2})
    t9 = Training(chk, stages, echo=lambda m: None)
    t9.reuse(tmp_path / "train")
    t9.pairs(1, scripted_llm(reward_writer)[0])
    feats = t9.check_features()
    assert len(feats) == 2 and set(feats) | set(t9.pair_features()) == set(t9.features) and not (
        set(feats) & set(t9.pair_features()))
    with pytest.raises(ConfigError, match="needs the LLM"):
        t9.reward_check(None, t9.vectors())
    sft, vectors = t9.policy("sft"), t9.vectors()
    greedy = {f: sft.generate([t9.prompt(sft, f)], vectors[f][None], max_new_tokens=8)[0][0] for f in feats}
    expected = {f: asyncio.run(reward(greedy[f], f, t9.records[f].max_act, scripted_llm(reward_writer)[0], t9.oracle,
                                      chk.reward_texts)).reward for f in feats}
    writers = []

    def client():
        c, w = scripted_llm(reward_writer)
        writers.append(w)
        return c

    t9.dpo(1, client)
    es = json.loads((tmp_path / "train9" / "round1" / "early_stop.json").read_text())
    assert es["check"] == "check_reward" and es["heldout_pairs"] == 0 and [e["epoch"] for e in es["epochs"]] == [0, 1]
    e0 = es["epochs"][0]
    assert [(r["feature"], r["text"]) for r in e0["features"]] == [(f, greedy[f]) for f in feats]
    assert [r["reward"] for r in e0["features"]] == pytest.approx([expected[f] for f in feats])
    assert e0["check_reward"] == pytest.approx(np.mean(list(expected.values()))) and e0["rewarded"] == 2
    assert len(writers) == 2 and len(writers[0].requests) == 2  # one client per check, one reward per feature
    assert es["best_epoch"] == max(es["epochs"], key=lambda e: e["check_reward"])["epoch"]
    assert (tmp_path / "train9" / "round1" / "adapter" / "adapter_config.json").is_file()
    t9.close()
    # the share reward: the same candidates and reward texts, measured again by the oracle (no LLM call) — equal
    # to what a fresh round computes, which writes the same texts (seeded candidates, the same scripted LLM)
    share = cfg.model_copy(update={"dir": str(tmp_path / "train7"), "reward_source": "share"})
    t7 = Training(share, stages, echo=lambda m: None)
    assert t7.reuse(tmp_path / "train") == ["sft", "round1/candidates.jsonl (rewards re-measured: share)"]
    llm7, writer7 = scripted_llm(reward_writer)
    t7.pairs(1, llm7)
    assert writer7.requests == []
    rows7 = {r["feature"]: r for r in map(json.loads, (tmp_path / "train7" / "round1" / "candidates.jsonl")
                                              .read_text().splitlines())}
    for r in rows:
        for c, c7 in zip(r["candidates"], rows7[r["feature"]]["candidates"]):
            assert (c7["text"], c7["texts"], c7["raw"]) == (c["text"], c["texts"], c["raw"])
            if c["reward"] is None:
                assert c7 == c
                continue
            acts = [a.max(r["feature"]) for a in t7.oracle.activations(c["texts"], [r["feature"]])]
            assert c7["reward"] == pytest.approx(np.mean([r["max_act"] > 0 and a >= 0.5 * r["max_act"]
                                                          for a in acts]))  # a dead feature rewards nothing
    assert any(c["reward"] not in (0.0, 1.0) for r in rows for c in r["candidates"] if c["reward"] is not None)
    assert all(c["reward"] in (0.0, 1.0) for r in rows7.values() for c in r["candidates"] if c["reward"] is not None)
    t7.close()
    t8 = Training(share.model_copy(update={"dir": str(tmp_path / "train8")}), stages, echo=lambda m: None)
    shutil.copytree(tmp_path / "train" / "sft", tmp_path / "train8" / "sft")
    llm8, writer8 = scripted_llm(reward_writer)
    t8.pairs(1, llm8)
    assert len(writer8.requests) == calls  # rewarded afresh: one LLM call per distinct candidate
    rows8 = {r["feature"]: r for r in map(json.loads, (tmp_path / "train8" / "round1" / "candidates.jsonl")
                                              .read_text().splitlines())}
    strip = ("seconds",)
    assert {f: {k: v for k, v in r.items() if k not in strip} for f, r in rows8.items()} == {
        f: {k: v for k, v in r.items() if k not in strip} for f, r in rows7.items()}
    t8.close()
    # the corpus reward: SFT reused, candidates its own (another reward), no LLM call; the words are looked up
    t6 = Training(cfg.model_copy(update={"dir": str(tmp_path / "train6"), "reward_source": "corpus"}), stages,
                  echo=lambda m: None)
    assert t6.reuse(tmp_path / "train") == ["sft"]
    llm6, writer6 = scripted_llm(reward_writer)
    t6.pairs(1, llm6)
    assert writer6.requests == []
    rows6 = [json.loads(x) for x in (tmp_path / "train6" / "round1" / "candidates.jsonl").read_text().splitlines()]
    assert {r["feature"] for r in rows6} == {1, 2, 3, 4}
    for c in (c for r in rows6 for c in r["candidates"]):
        assert (c["error"] is None and 0 <= c["reward"] <= 1 and c["rewards"] == [c["reward"]]) or c["error"]
    assert json.loads((tmp_path / "train6" / "round1" / "pairs.json").read_text())["reward_source"] == "corpus"
    the = t6.records[1]  # feature 1 fires on " the" and nowhere else
    right, wrong = corpus_reward('the tokens "the"', the, 0.5), corpus_reward('the tokens "forest"', the, 0.5)
    assert right.reward > 0.5 and wrong.reward == 0.0 and right.raw == pytest.approx(the.max_act, rel=1e-4)
    both = corpus_reward('the tokens "the", "forest", "The"', the, 0.5)  # "The" is the same word (any case)
    assert both.reward == pytest.approx(right.reward / 2) and len(both.texts) == 2
    with pytest.raises(SaexplainError, match="names no word"):
        corpus_reward('the tokens ""', the, 0.5)
    t6.close()
    # the generation reward: the generation scorer itself writes a candidate's texts (its prompt, reward_texts
    # sentences, greedy), so a candidate's reward is the score the evaluation's scorer gives it; SFT reused only
    gen = cfg.model_copy(update={"dir": str(tmp_path / "train12"), "reward_source": "generation", "reward_texts": 3})
    t12 = Training(gen, stages, echo=lambda m: None)
    assert t12.reuse(tmp_path / "train") == ["sft"]

    def sentence_writer(req):
        cand = last_user(req).split("Description: ", 1)[1].split("\n", 1)[0]
        word = "the" if zlib.crc32(cand.encode()) % 2 else "a"
        return json.dumps({"sentences": [f"Once {word} king walked into {word} old forest.", "A dog barked."] + (
            ["Then the sun rose."] if zlib.crc32(cand.encode()) % 3 else ["Then a sun rose."])})

    class InFlight(ScriptedBackend):  # counts the requests in flight together (each takes a moment)
        now = most = 0

        async def complete(self, request, timeout):
            InFlight.now += 1
            InFlight.most = max(InFlight.most, InFlight.now)
            try:
                await asyncio.sleep(0.02)
                return await super().complete(request, timeout)
            finally:
                InFlight.now -= 1

    writer12 = InFlight(sentence_writer)
    t12.pairs(1, LLM(LLMConfig(retries=0, cache=False, max_concurrency=3), backend=writer12))
    assert InFlight.most == 3  # a feature's distinct candidates are rewarded together, up to max_concurrency
    rows12 = [json.loads(x) for x in (tmp_path / "train12" / "round1" / "candidates.jsonl").read_text().splitlines()]
    scored = [(r["feature"], c) for r in rows12 for c in r["candidates"] if c["reward"] is not None]
    assert scored and {round(c["reward"], 3) for _, c in scored} - {0.0, 1.0}  # shares of 3 sentences, not 0/1
    prompt = template(generative.__file__, "generation")
    assert [list(q.messages) for q in writer12.requests] == [
        prompt.chat(explanation=c["text"], n=3) for r in rows12 for c in
        {c["text"]: c for c in r["candidates"] if c["text"]}.values()]
    for f, c in scored:
        if t12.records[f].max_act <= 0:  # a dead feature: the reward is 0 (the scorer's 0.5 × 0 threshold hits all)
            assert c["reward"] == 0.0
            continue
        res = asyncio.run(generative.Generation(generative.GenerationConfig(sentences=3)).run(
            t12.records[f], c["text"], scripted_llm(sentence_writer)[0], t12.oracle))
        assert c["reward"] == pytest.approx(res.value) and c["rewards"] == [c["reward"]]
        assert c["texts"] == [x["text"] for x in res.details["sentences"]]
    assert json.loads((tmp_path / "train12" / "round1" / "pairs.json").read_text())["reward_source"] == "generation"
    t12.close()
    # the rounds on unseen features: the band's features outside the split (new to the SFT model, as held-out ones
    # are), listed in split.json; SFT reused, the candidates its own; the reward check draws from the same pool
    unseen = cfg.model_copy(update={"dir": str(tmp_path / "train10"), "dpo_features": "unseen", "pair_features": 1,
                                    "dpo_check": "reward", "dpo_check_features": 1})
    t10 = Training(unseen, stages, echo=lambda m: None)
    split10 = json.loads((tmp_path / "train10" / "split.json").read_text())
    assert split10["train"] == [1, 2, 3, 4] and split10["heldout"] == [0]
    assert split10["unseen"] and not set(split10["unseen"]) & {0, 1, 2, 3, 4}
    assert t10.reuse(tmp_path / "train") == ["sft"]  # the candidates are another pool's
    pf, cf = t10.pair_features(), t10.check_features()
    assert len(pf) == len(cf) == 1 and set(pf + cf) <= set(split10["unseen"]) and pf != cf
    assert set(pf + cf) <= set(t10.records) and set(pf + cf) <= set(t10.vectors())
    llm10, writer10 = scripted_llm(reward_writer)
    with pytest.raises(SaexplainError, match="no preference pair"):  # the scripted texts fire feature 1 only
        t10.pairs(1, llm10)
    rows10 = [json.loads(x) for x in (tmp_path / "train10" / "round1" / "candidates.jsonl").read_text().splitlines()]
    assert [r["feature"] for r in rows10] == pf and writer10.requests
    assert rows10[0]["max_act"] == t10.records[pf[0]].max_act
    t10.close()
    with pytest.raises(ConfigError, match="needs --pair-features"):
        Training(unseen.model_copy(update={"dir": str(tmp_path / "train11"), "pair_features": 0}), stages,
                 echo=lambda m: None)
    # a folder from before split.json listed the unseen features gets them added, the split otherwise unchanged
    old_split = json.loads((tmp_path / "train" / "split.json").read_text())
    (tmp_path / "train" / "split.json").write_text(json.dumps({k: old_split[k] for k in ("train", "heldout")}))
    Training(cfg, stages, echo=lambda m: None).close()
    assert json.loads((tmp_path / "train" / "split.json").read_text()) == old_split == split10
    # a folder whose config predates a training setting ran with its default: another value is refused
    saved = json.loads((tmp_path / "train" / "config.json").read_text())
    del saved["training"]["reward_source"]
    (tmp_path / "train" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="was started with training.reward_source='llm', not 'corpus'"):
        Training(cfg.model_copy(update={"reward_source": "corpus"}), stages, echo=lambda m: None)
    t4 = Training(cfg.model_copy(update={"dir": str(tmp_path / "train4"), "sft_epochs": 2}), stages,
                  echo=lambda m: None)
    with pytest.raises(ConfigError, match="trained with training.sft_epochs=1, this folder has 2"):
        t4.reuse(tmp_path / "train")
    with pytest.raises(ConfigError, match="not a training folder"):
        t4.reuse(tmp_path / "nowhere")
    t4.close()
    # evaluation: the stages as explainers in the held-out run (same judge, same features)
    ev = _stages(ground_truth, tmp_path, SAEExplainerConfig(train_dir=str(tmp_path / "train"), max_new_tokens=8),
                 features="0", explainers="oneshot,saeexplainer@sft,saeexplainer@round2", scorers="")
    h2 = run_all(ev, echo=lambda m: None, backend=backend)
    assert h2.run_id == h.run_id
    with Store(held.run.store, readonly=True) as db:
        exps = {e["method"]: e for e in db.explanations(h.run_id)}
    assert set(exps) == {"oneshot", "saeexplainer@sft", "saeexplainer@round2"}
    assert all(exps[m]["error"] is None and exps[m]["description"] for m in exps)
    # the web UI's feature page of a training feature shows each round's candidates, rewards and pair
    from saexplain.web.read import Reader

    ev1 = _stages(ground_truth, tmp_path, SAEExplainerConfig(train_dir=str(tmp_path / "train"), max_new_tokens=8),
                  features="1", explainers="oneshot", scorers="")
    assert run_all(ev1, echo=lambda m: None, backend=backend).run_id == h.run_id
    page = Reader(held.run.store).feature(h.run_id, 1)
    assert [r.round for r in page.saeexplainer] == [1, 2]
    r1 = page.saeexplainer[0]
    assert sorted(c.text for c in r1.candidates) == sorted(c["text"] for r in rows if r["feature"] == 1
                                                           for c in r["candidates"])
    trained = [(c, r) for f, c, r in zip(pairs["feature"], pairs["chosen"], pairs["rejected"]) if f == 1]
    # the dataset's texts carry a leading space (the completion after the prompt)
    assert [(" " + p.chosen, " " + p.rejected) for p in r1.pairs] == trained
    assert trained or r1.pair_reason
    assert Reader(held.run.store).feature(h.run_id, 0).saeexplainer == []  # held out: never trained on
    from fastapi.testclient import TestClient

    from saexplain.web.app import create_app

    with TestClient(create_app(held.run.store, probe=False)) as client:
        html = client.get(f"/runs/{h.run_id}/features/1").text
    assert "SAEExplainer training" in html and "round 2" in html


def test_eval_of_an_untrained_stage_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a training folder"):
        SAEExplainerConfig(train_dir=str(tmp_path), stage="sft").resolved()
    (tmp_path / "explainer.json").write_text(SAEExplainerConfig().to_json())
    with pytest.raises(ConfigError, match="adapter not trained yet"):
        SAEExplainerConfig(train_dir=str(tmp_path), stage="round1").resolved().adapters()
    with pytest.raises(ConfigError, match="unknown explainer 'saeexplainerx'|has no variants|stage"):
        StageConfigs(run=RunConfig(explainers="oneshot@sft"))
    with pytest.raises(SaexplainError):
        StageConfigs(run=RunConfig(explainers="saeexplainer@round3"))
    with pytest.raises(ConfigError, match="needs --saex-train-dir"):  # up front, not once per feature
        StageConfigs(run=RunConfig(explainers="oneshot,saeexplainer"))


def test_heldout_features_include_the_runs_whole_choice_even_when_not_recorded(ground_truth, tmp_path):
    from saexplain.train.data import heldout_features

    held = _stages(ground_truth, tmp_path, features="random:3", explainers="oneshot", scorers="",
                   min_density=0.0, max_density=1.0)
    backend = ScriptedBackend(lambda req: json.dumps({"explanation": "something"}))
    h = run_all(held, echo=lambda m: None, backend=backend)
    with Store(held.run.store) as db:
        config = json.loads(db.run(h.run_id)["config_json"])
        chosen = set(config["features"])
        assert len(chosen) == 3
        cfg = TrainConfig(heldout_runs=str(h.run_id))
        assert heldout_features(db, cfg) == chosen
        del config["features"]  # a run from before choices were saved: the choice is redone from its cache
        db.set_run_config(h.run_id, json.dumps(config))
        assert heldout_features(db, cfg) == chosen
        with pytest.raises(SaexplainError, match="no run 999"):
            heldout_features(db, TrainConfig(heldout_runs="999"))


def test_cli_train_sft_then_dpo_without_pairs(ground_truth, tmp_path):
    from typer.testing import CliRunner

    from saexplain.cli import app

    corpus = tmp_path / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    refs = tmp_path / "np.json"
    refs.write_text(json.dumps({"explanations": [{"index": 1, "description": "the word the"}]}))
    common = ["--dir", str(tmp_path / "t"), "--store", str(tmp_path / "s.db"), "--model", str(ground_truth["model"]),
              "--sae", str(ground_truth["sae"]), "--corpus", str(corpus), "--context", "48", "--tokens", "30000",
              "--features", "1,2", "--saex-model", str(ground_truth["model"]), "--saex-placeholder", PLACEHOLDER, "--saex-block", "0",
              "--sft-epochs", "1"]
    res = CliRunner().invoke(app, ["train", "sft", *common, "--references", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "reference file not found" in res.output, res.output
    res = CliRunner().invoke(app, ["train", "sft", *common, "--references", str(refs)])
    assert res.exit_code == 0, res.output
    assert "1 training features have no reference" in res.output and "sft: 1 references" in res.output
    assert json.loads((tmp_path / "t" / "split.json").read_text())["train"] == [1, 2]
    assert SAEExplainerConfig.load(tmp_path / "t" / "explainer.json").placeholder == PLACEHOLDER
    res = CliRunner().invoke(app, ["train", "dpo", "--round", "1", *common, "--references", str(refs)])
    assert res.exit_code == 2 and "run `saexplain train pairs --round 1` first" in res.output, res.output
    config = str(tmp_path / "t" / "config.json")  # the folder's settings, without repeating the options
    res = CliRunner().invoke(app, ["train", "dpo", "--round", "1", "--config", config])
    assert res.exit_code == 2 and "run `saexplain train pairs --round 1` first" in res.output, res.output
    res = CliRunner().invoke(app, ["train", "dpo", "--config", config, "--features", "3"])
    assert res.exit_code == 2 and "either --config or options" in res.output, res.output


def test_text_evidence_variant_needs_no_placeholder_and_trains(ground_truth, tmp_path):
    from datasets import load_from_disk

    from saexplain.train.pipeline import Training

    saex = SAEExplainerConfig(model=str(ground_truth["model"]), evidence="text", placeholder="queen",  # 3 tokens
                              block=0, examples=3, window=8, max_new_tokens=8)
    refs = tmp_path / "np.json"
    refs.write_text(json.dumps([{"index": 1, "description": "the word the"}, {"index": 2, "description": "x"}]))
    t = Training(TrainConfig(dir=str(tmp_path / "t"), features="1,2", references=str(refs), sft_epochs=1,
                             sft_batch=2), _stages(ground_truth, tmp_path, saex, explainers="", scorers=""),
                 echo=lambda m: None)
    assert t.vectors() is None
    t.sft()
    t.close()
    rows = load_from_disk(str(tmp_path / "t" / "sft" / "data"))
    assert "<<" in rows[0]["prompt"] and "Examples where the feature fires" in rows[0]["prompt"]
    ev = _stages(ground_truth, tmp_path, SAEExplainerConfig(train_dir=str(tmp_path / "t"), max_new_tokens=8),
                 features="1", explainers="saeexplainer@sft", scorers="")
    h = run_all(ev, echo=lambda m: None, backend=ScriptedBackend(lambda req: "{}"))
    with Store(ev.run.store, readonly=True) as db:
        (e,) = db.explanations(h.run_id)
    assert e["error"] is None and e["description"] and e["evidence"]["evidence"] == "text"


def test_concurrent_explanations_are_generated_as_one_batch_with_each_its_solo_text(tiny_model_dir):
    import asyncio

    lm = _lm(tiny_model_dir)
    g = torch.Generator().manual_seed(2)
    vectors = [torch.randn(lm.d_model, generator=g) for _ in range(4)]
    solo = [lm.generate([lm.prompt()], v, max_new_tokens=5)[0][0] for v in vectors]

    async def together():
        return await asyncio.gather(*(lm.agenerate(lm.prompt(), v, max_new_tokens=5) for v in vectors),
                                    lm.agenerate(lm.prompt(), vectors[0], temperature=0.9, seed=3,
                                                 max_new_tokens=5))

    *batched, sampled = asyncio.run(together())
    assert lm.batches == [4, 1]  # the greedy four in one batch; the sampled one alone
    assert batched == solo
    assert sampled == lm.generate([lm.prompt()], vectors[0], temperature=0.9, seed=3, max_new_tokens=5)[0][0]


def test_explainer_device_dtype_and_no_repeat_settings_reach_the_model(tiny_model_dir):
    """The GPU settings' code path on the CPU: the explainer LM in bfloat16 injects and generates; a device this
    machine lacks is one line; greedy decoding of the tiny model loops, and no_repeat_ngram stops it."""
    from saexplain.train.dpo import dpo_args

    vec = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    bf16 = _lm(tiny_model_dir, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    (out,) = bf16.generate([bf16.prompt()], vec, max_new_tokens=6)
    assert isinstance(out[0], str)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--saex-device"):
            _lm(tiny_model_dir, device="cuda")

    def trigrams_repeat(lm) -> bool:
        (text,), = lm.generate([lm.prompt()], vec, max_new_tokens=40)
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        return len(grams) != len(set(grams))

    assert trigrams_repeat(_lm(tiny_model_dir, no_repeat_ngram=0))  # the loop the setting is for
    assert not trigrams_repeat(_lm(tiny_model_dir, no_repeat_ngram=3))
    args = dpo_args(TrainConfig(train_dtype="bfloat16"), 1, tiny_model_dir.parent / "x")
    assert args.bf16 and args.use_cpu


def test_top_token_references_warm_up_every_feature_without_an_llm(ground_truth, tmp_path):
    """`--references top-tokens`: each training feature's reference is its most frequent peak tokens in the explain
    pool, counted (feature 0 of the ground-truth SAE fires only on "wife", feature 1 on "the")."""
    from datasets import load_from_disk
    from typer.testing import CliRunner

    from saexplain.cli import app

    corpus = tmp_path / "tales.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:120_000])
    res = CliRunner().invoke(app, [
        "train", "sft", "--dir", str(tmp_path / "t"), "--store", str(tmp_path / "s.db"),
        "--model", str(ground_truth["model"]), "--sae", str(ground_truth["sae"]), "--corpus", str(corpus),
        "--context", "48", "--tokens", "30000", "--features", "0,1", "--saex-model", str(ground_truth["model"]),
        "--saex-placeholder", PLACEHOLDER, "--saex-block", "0", "--sft-epochs", "1", "--references", "top-tokens"])
    assert res.exit_code == 0, res.output
    rows = {r["feature"]: r["completion"] for r in load_from_disk(str(tmp_path / "t" / "sft" / "data"))}
    assert rows == {0: ' the token "wife"', 1: ' the token "the"'}


def test_pair_features_are_a_seeded_subset_of_the_training_features():
    """SFT warms up on every training feature; the DPO rounds (LLM calls per candidate) on --pair-features of them."""
    from saexplain.train.pipeline import Training

    t = Training.__new__(Training)
    t.features = t.pool = list(range(100, 400, 3))  # the rounds' pool: the training features ('sft')
    t.cfg = TrainConfig(pair_features=12)
    first = t.pair_features()
    assert len(first) == 12 and set(first) <= set(t.features) and first == sorted(first)
    assert first == t.pair_features() and first != t.features[:12]  # seeded, not the first twelve
    check = t.check_features()  # DPO's reward check: the next 16 of the same draw, never trained on
    assert len(check) == 16 and not set(check) & set(first) and set(check) <= set(t.features)
    t.cfg = TrainConfig(pair_features=20)
    assert set(first) <= set(t.pair_features()) and set(t.pair_features()) - set(first) <= set(check)
    t.cfg = TrainConfig(pair_features=0)
    assert t.pair_features() == t.features
    with pytest.raises(ConfigError, match="outside the pair features"):
        t.check_features()
