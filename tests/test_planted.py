"""Planted features (subject/planted.py): rule labels, probes fitted on a real residual stream (the tiny model's
embeddings), the SAELens JumpReLU folder they are written to, and the oracle firing exactly where the probe says."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import TEST_DATA
from saexplain.subject.planted import (
    CONCEPTS,
    collect_residuals,
    concept_labels,
    enumerates,
    fit_planted,
    lexical,
    recovered,
    write_planted_sae,
)


def by_name(name):
    return next(c for c in CONCEPTS if c.name == name)


def test_rule_labels_and_recovery_keywords():
    toks = ["", "“", "I", " will", " not", " go", ",”", " said", " Mr", ".", " Smith", ".", " The", " red", " hen", "."]
    assert np.flatnonzero(concept_labels(by_name("after_negation"), toks)).tolist() == [5]
    assert np.flatnonzero(concept_labels(by_name("after_title"), toks)).tolist() == [10]
    assert np.flatnonzero(concept_labels(by_name("inside_quotes"), toks)).tolist() == [2, 3, 4, 5]
    assert np.flatnonzero(concept_labels(by_name("sentence_start"), toks)).tolist() == [12]
    assert np.flatnonzero(concept_labels(by_name("colours"), toks)).tolist() == [13]
    assert recovered(by_name("family"), "family members such as mother or son")
    assert not recovered(by_name("family"), 'the word "mother"')  # one member of the set is over-narrow
    assert recovered(by_name("after_negation"), "the verb that follows a negation")
    assert recovered(by_name("after_negation"), "words right after \"not\"")
    assert not recovered(by_name("after_negation"), "the word go")
    assert recovered(by_name("sentence_start"), "the first word of a sentence")
    assert enumerates(by_name("family"), "fires on 'son', 'father', 'brother'")
    assert not enumerates(by_name("family"), "son and sons")
    assert not enumerates(by_name("after_negation"), "not, never, n't")  # context rules have no members


def test_a_planted_sae_loads_and_fires_where_its_rule_says(tiny_model_dir, tmp_path):
    from saexplain.subject.model import SubjectModel, load_model_and_tokenizer
    from saexplain.subject.oracle import Oracle, SubjectConfig

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    subject = SubjectModel(model, tok, "blocks.0.hook_resid_pre", name=str(tiny_model_dir))
    text = (TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[200_000:400_000]
    docs = [p for p in text.split("\n\n") if len(p) > 200]
    x, toks = collect_residuals(subject, docs, 48, 400)
    pronouns = lexical("pronouns", {"he", "she", "him", "her", "his"}, "third-person pronouns", r"pronoun")
    never = lexical("never", {"xylophone"}, "a word the corpus lacks", r"xylophone")
    probes = fit_planted(x, toks, [pronouns, never])
    assert [p.concept.name for p in probes] == ["pronouns"]  # too few positives: no latent, not a noisy one
    (p,) = probes
    assert p.precision >= 0.7 and p.recall >= 0.8 and p.positives > 50
    folder = write_planted_sae(probes, tmp_path / "planted", "blocks.0.hook_resid_pre", str(tiny_model_dir))
    meta = json.loads((folder / "planted.json").read_text())
    assert meta[0]["concept"] == "pronouns" and meta[0]["description"] == "third-person pronouns"

    oracle = Oracle.from_config(SubjectConfig(model=str(tiny_model_dir), sae=str(folder)))
    assert oracle.d_sae == 1
    sentences = ["She gave him her bread, and he ate it in the wood.", "The king rode to the castle at night."]
    for sentence, res in zip(sentences, oracle.activations(sentences, [0])):
        acts = res.feature(0)
        rule = concept_labels(pronouns, list(res.tokens))
        # the latent is the probe: it fires exactly where the probe's logit passes its threshold …
        ids, _ = subject.tokenize([sentence])[0]
        logits = subject.hidden(torch.tensor([ids]))[0, -len(acts):].float().numpy() @ p.w + p.b
        assert ((acts > 0) == (logits > p.threshold)).all()
        assert (acts[acts > 0] >= 1.0 - 1e-4).all()  # JumpReLU: every activation at least the margin
        # … and that is where the rule says (on these sentences, exactly)
        assert ((acts > 0) == rule).all(), list(zip(res.tokens, acts, rule))
