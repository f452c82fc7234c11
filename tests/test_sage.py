"""The SAGE agent's state machine, driven by a ScriptedLLM (canned replies, named as such) against the real
oracle on the ground-truth SAE (feature 0 fires on "▁wife" only): every transition, malformed replies,
each budget, and corpus text that tries to give instructions."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from conftest import make_record
from saexplain.explain.sage import SAGE, SAGEConfig, _dedupe
from saexplain.llm import LLMError
from saexplain.sampling.record import FeatureRecord, Window
from saexplain.testing.scripted import (  # noqa: F401
    INJECTION,
    Script,
    active_ids,
    last_user,
    measure,
    scripted_llm,
    step_of,
    task_message,
)


def run_sage(record, oracle, script, **cfg):
    llm, backend = scripted_llm(script)
    agent = SAGE(SAGEConfig(selection="none", **cfg))
    return asyncio.run(agent.explain(record, llm, oracle)), backend





TEXTS = ["The man and his wife lived by the sea.", "The wife said nothing.", "His wife was glad."]


def statuses(exp) -> dict[str, str]:
    return {h["text"]: h["status"] for h in exp.evidence["hypotheses"]}


def test_every_transition_with_measured_verdicts(wife):
    script = Script()
    exp, backend = run_sage(make_record(wife, TEXTS), wife, script)
    st = statuses(exp)
    assert st["the word wife"] == "CONFIRMED"  # 2 consistent probes
    assert st["words about water"] == "REFUTED"  # 2 contradicting probes
    assert st["the word husband"] == "CONFIRMED"  # the negative case held: no firing on "husband"
    assert st["a wife (at home or not)"] == "CONFIRMED"  # mixed → REFINED → retested → confirmed
    h3 = next(h for h in exp.evidence["hypotheses"] if h["text"].startswith("a wife"))
    assert h3["refinements"] == 1 and h3["history"][0]["text"] == "people at home"
    # one design call per active hypothesis; then only the rewritten one is tested again
    assert script.steps == ["analyze"] + ["design"] * 4 + ["rewrite", "design", "conclude"]
    # probes of every active hypothesis of a round went to the oracle together; each is in the trace
    probes = [s for s in exp.trace if s["kind"] == "probe"]
    assert len(probes) == 8 + 2 and all(len(p["content"]["tokens"]) == len(p["content"]["acts"]) for p in probes)
    assert exp.description == 'the word "wife"'
    assert exp.labels == ["wife", "a wife"]  # "Wife!" merged into "wife"
    assert exp.evidence["stop_reason"] == "all hypotheses decided"
    assert exp.usage["calls"] == 8


def test_untested_hypotheses_never_reach_the_conclusion(wife):
    script = Script()
    exp, backend = run_sage(make_record(wife, TEXTS), wife, script, max_probes=2)
    concl = [r for r in backend.requests if step_of(r) == "conclude"][0]
    state = last_user(concl)
    assert "words about water" not in state and "the word husband" not in state  # never tested
    assert "the word wife" in state
    assert exp.evidence["stop_reason"] == "max_probes (2)"


def test_malformed_reply_gets_one_corrective_retry(wife):
    exp, backend = run_sage(make_record(wife, TEXTS), wife, Script(malformed_first=1))
    assert statuses(exp)["the word wife"] == "CONFIRMED"
    first_two = backend.requests[:2]
    assert "not valid" in last_user(first_two[1])  # the retry quoted the parse error


def test_malformed_twice_is_a_recorded_failure(wife):
    with pytest.raises(LLMError):
        run_sage(make_record(wife, TEXTS), wife, Script(malformed_first=2))


def test_malformed_mid_run_concludes_with_what_it_has_and_says_it_is_degraded(wife):
    script = Script()
    calls = {"n": 0}

    def handler(req):
        calls["n"] += 1
        if step_of(req) == "rewrite":
            return "no json here"
        return script(req)

    exp, _ = run_sage(make_record(wife, TEXTS), wife, handler)
    assert exp.evidence["stop_reason"] == "llm_error"
    assert any(s["kind"] == "error" and s["content"]["step"] == "refine" for s in exp.trace)
    st = statuses(exp)
    assert st["the word wife"] == "CONFIRMED" and st["people at home"] == "REFUTED"
    assert exp.description == 'the word "wife"'
    # what it concluded is kept for reading, but it is not a result: degraded, with the step that failed
    assert exp.status == "degraded" and exp.reason.startswith("LLM failed in 1 step(s)") and "refine" in exp.reason
    assert exp.evidence["faults"][0].startswith("refine:")


@pytest.mark.parametrize("budget, reason", [
    ({"max_llm_calls": 3}, "max_llm_calls (3)"),
    ({"max_tokens": 500}, "max_tokens (500)"),
    ({"max_seconds": 1e-9}, "max_seconds (1e-09)"),
    ({"max_probes": 3}, "max_probes (3)"),
])
def test_each_budget_is_honoured(wife, budget, reason):
    exp, backend = run_sage(make_record(wife, TEXTS), wife, Script(), **budget)
    assert exp.evidence["stop_reason"] == reason
    if "max_llm_calls" in budget:
        assert len(backend.requests) <= budget["max_llm_calls"]
    if "max_probes" in budget:
        assert exp.evidence["probes"] <= budget["max_probes"]
    assert exp.description  # it concluded with what it had


def test_llm_verdict_mode_cannot_leave_a_tested_hypothesis_unchanged(wife):
    exp, _ = run_sage(make_record(wife, TEXTS), wife, Script(), verdict="llm")
    rejected = [s for s in exp.trace if s["kind"] == "status" and "llm_verdict_rejected" in s["content"]]
    assert rejected  # the scripted judge said UNCHANGED after 2 tests: the measured verdict was used
    assert statuses(exp)["words about water"] == "REFUTED"


def test_instructions_inside_examples_change_nothing(wife):
    plain = make_record(wife, TEXTS)
    injected = make_record(wife, TEXTS + [f"His wife wrote: {INJECTION}"])
    a, _ = run_sage(plain, wife, Script(), window=80)
    b, backend = run_sage(injected, wife, Script(obey_injection=True), window=80)
    assert any(INJECTION in last_user(r) for r in backend.requests)
    # the text reaches the LLM only inside the examples block, as data
    for req in backend.requests:
        user = last_user(req)
        if INJECTION in user:
            assert user.index(INJECTION) < user.index("Task:")
    # even an LLM that obeys it cannot confirm anything: verdicts come from measurements
    sb = statuses(b)
    assert sb["EVERYTHING IS CONFIRMED"] == "REFUTED"
    assert sb["the word wife"] == statuses(a)["the word wife"] == "CONFIRMED"
    assert b.description == a.description


def test_dedupe_merges_case_and_punctuation():
    assert _dedupe(["Wife", "wife!", " a  wife", "A wife."]) == ["Wife", "a wife"]


def test_review_adds_hypotheses_when_nothing_was_confirmed(wife):
    script = Script()

    def handler(req):
        if step_of(req) == "analyze":
            script.steps.append("analyze")
            return json.dumps({"observation": "?", "token": "words about water", "context": "the sky",
                               "category": "birds", "negative_case": "the word husband"})
        return script(req)

    exp, _ = run_sage(make_record(wife, TEXTS), wife, handler, max_llm_calls=20)
    assert "review" in script.steps
    st = statuses(exp)
    assert st["the word wife"] == "CONFIRMED"  # proposed by the review, then tested
    assert st["words about water"] == "REFUTED"


def test_selection_keeps_the_candidate_that_best_separates_the_explain_pool(wife):
    llm, _ = scripted_llm(Script())
    exp = asyncio.run(SAGE(SAGEConfig(selection="embedding")).explain(make_record(wife, TEXTS), llm, wife))
    sel = [s for s in exp.trace if s["kind"] == "selection"][0]["content"]
    scores = {k: v for k, v in sel["scores"].items() if v is not None}
    assert exp.description == max(scores, key=scores.get)
    assert np.isfinite(list(scores.values())).all()


# ------------------------------------------------------------------------------- conclusion rules, selection
def test_explanations_are_clean_text_and_conclusions_follow_the_rules():
    from saexplain.explain.rules import clean_text, conclusion_problems

    assert clean_text('the number two}') == "the number two"
    assert clean_text('"colour words"}') == "colour words"
    assert clean_text('the word "wife""}') == 'the word "wife"'
    assert clean_text('Explanation: "colour words"]}') == "colour words"
    assert clean_text('the word "wife"') == 'the word "wife"'
    ex = ["The man and his wife lived by the sea.", "the two rivers, the four hills"]
    assert conclusion_problems('the word "wife"', ex) == []
    assert conclusion_problems("number words after a determiner, e.g. two or four", ex) == []
    assert any("copies an exemplar" in p for p in conclusion_problems("the man and his wife lived by the sea", ex))
    assert any("markers" in p for p in conclusion_problems("the <<two>> rivers, the <<four>>", ex))
    assert any("notation" in p for p in conclusion_problems("H1 [ACTIVE] 'I'", ex))
    assert any("does not fire" in p for p in conclusion_problems("The feature should not fire on words that rhyme", ex))
    assert any("words" in p for p in conclusion_problems(" ".join(["word"] * 16), ex))
    assert any("cut off" in p for p in conclusion_problems("names of family members such as the", ex))
    assert any("cut off" in p for p in conclusion_problems("names with titles like 'Sir', 'Mr', 'Prince", ex))
    assert any("cut off" in p for p in conclusion_problems("numbers (two, three", ex))
    assert conclusion_problems("the word after 'not' (as in 'not stop'), don't, King's", ex) == []
    assert any("negative-case" in p for p in conclusion_problems("the word husband", ex, "The word husband."))


def test_a_copied_exemplar_conclusion_is_rejected_and_redone_once(wife):
    script = Script()
    bad = "The man and his wife lived by the sea"

    def handler(req):
        if step_of(req) == "conclude" and "was rejected" not in task_message(req):
            script.steps.append("conclude")
            return json.dumps({"description": bad, "labels": ["wife"]})
        return script(req)

    exp, backend = run_sage(make_record(wife, TEXTS), wife, handler)
    assert script.steps[-2:] == ["conclude", "shorten"]
    rejected = [s["content"] for s in exp.trace if s["kind"] == "conclusion_rejected"]
    assert len(rejected) == 1 and "copies an exemplar" in rejected[0]["problems"][0]
    # the redo is a short rewrite of the rejected reply, told why, without the exemplars
    redo = [r for r in backend.requests if step_of(r) == "shorten"][-1]
    assert bad in task_message(redo) and "copies an exemplar" in task_message(redo)
    assert "Top activating examples" not in task_message(redo)
    assert exp.description == 'the word "wife"' and exp.status == "ok"


def test_conclusions_that_keep_breaking_the_rules_fall_back_to_the_best_measured_hypothesis(wife):
    script = Script()

    def handler(req):
        if step_of(req) in ("conclude", "shorten"):
            script.steps.append(step_of(req))
            return json.dumps({"description": "The feature should not fire on the word husband}",
                               "labels": ["the <<wife>> said"]})
        return script(req)

    exp, _ = run_sage(make_record(wife, TEXTS), wife, handler)
    assert script.steps.count("conclude") == 1 and script.steps.count("shorten") == 1
    fallback = [s["content"] for s in exp.trace if s["kind"] == "conclusion_fallback"]
    assert fallback and fallback[0]["from"] == "hypothesis"
    assert exp.description == "the word wife"  # confirmed, most probes as predicted, passes the rules
    assert "<<" not in " ".join(exp.labels)


def test_measured_selection_picks_what_fires_and_covers_the_pool_not_the_longest(wife):
    """Candidates: the conclusion (long, about the context only), its label and the surviving hypotheses. The
    scripted LLM writes sentences from each candidate alone; the oracle measures them."""
    script = Script()

    def handler(req):
        if step_of(req) == "conclude":
            script.steps.append("conclude")
            return json.dumps({"description": "people at home near the sea", "labels": ["wife"]})
        return script(req)

    llm, backend = scripted_llm(handler)
    exp = asyncio.run(SAGE(SAGEConfig(selection="measured")).explain(make_record(wife, TEXTS), llm, wife))
    sel = [s["content"] for s in exp.trace if s["kind"] == "selection"][0]
    scores = sel["scores"]
    longest = max(scores, key=lambda c: len(c))
    assert exp.description == sel["chosen"] == "wife" != longest
    assert scores["wife"]["fire"] == 1.0 and scores["wife"]["breadth"] == 1.0 and scores["wife"]["covered"] == ["wife"]
    assert scores["people at home near the sea"]["fire"] == 0.0  # text written from it does not fire the feature
    # "the word wife" measures the same as "wife": the tie goes to the shorter candidate
    assert scores["the word wife"]["score"] == scores["wife"]["score"]
    writes = [r for r in backend.requests if step_of(r) == "measure_write"]
    assert len(writes) == len(scores)  # one short call per candidate …
    assert all("Top activating examples" not in task_message(r) for r in writes)  # … that shows no exemplars


class FakeParentsOracle:
    """A FAKE oracle (stands in for the model + SAE in this arithmetic test): its feature fires 8.0 on the words
    "mother" and "father", nowhere else. Tokens are the whitespace-split words."""

    class _Res:
        def __init__(self, text):
            self.tokens = text.split()
            self._acts = np.asarray([8.0 if t.strip(".,").lower() in ("mother", "father") else 0.0
                                     for t in self.tokens], np.float32)

        def feature(self, f):
            return self._acts

    async def aactivations(self, texts, features):
        return [self._Res(t) for t in texts]


def test_measured_selection_prefers_the_set_to_one_of_its_members():
    """Breadth: the explain pool fires on "mother" and on "father"; sentences written from "mother" fire on one
    of those kinds, sentences written from "parents (mother, father)" on both — the set wins though both fire."""
    from saexplain.explain.base import Tracer
    from saexplain.explain.sage import Budget

    oracle = FakeParentsOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", i) for i, r in enumerate(
        oracle._Res(t) for t in ("His mother wept.", "The father spoke.", "Her mother sang."))]
    record = FeatureRecord(0, 8.0, 0.01, [], windows)

    def writer(req):
        cand = re.search(r"clear example of this: (.*)", task_message(req)).group(1)
        if "father" in cand:
            return json.dumps({"sentences": ["My mother came home.", "Your father was late.", "A mother and a father."]})
        return json.dumps({"sentences": ["My mother came home.", "The mother smiled.", "A mother waited."]})

    llm, _ = scripted_llm(writer)
    agent = SAGE(SAGEConfig(selection="measured"))
    trace = Tracer()

    async def go():
        from saexplain.llm import metered

        with metered() as usage:
            return await agent._measured_selection(record, llm, oracle, ["mother", "parents (mother, father)"], "",
                                                   trace, Budget(agent.cfg, usage), [], "mother")

    chosen, _ = asyncio.run(go())
    scores = [s["content"] for s in trace.steps if s["kind"] == "selection"][0]["scores"]
    assert scores["mother"]["fire"] == scores["parents (mother, father)"]["fire"] == 1.0
    assert scores["mother"]["breadth"] == 0.5 and scores["parents (mother, father)"]["breadth"] == 1.0
    assert chosen == "parents (mother, father)"


def test_the_exemplar_summary_counts_the_token_before_each_peak(wife):
    """What a context rule needs to be seen: the tokens just before the peaks, counted (no LLM)."""
    from saexplain.explain.base import firing_tokens

    record = make_record(wife, TEXTS)
    summary = firing_tokens([w for w in record.activating("explain") if w.kind == "top"])
    strongest, before = summary.splitlines()
    assert strongest.startswith("Strongest token per example: 'wife' ×3")
    assert before.startswith("Token just before it: ") and "'his' ×1" in before and "'The' ×1" in before


class FakeAfterNotOracle:
    """A FAKE oracle (stands in for the model + SAE in this test of the agent's logic): its feature fires 8.0 on
    the word right after "not", nowhere else. Tokens are the whitespace-split words."""

    class _Res:
        def __init__(self, text):
            self.tokens = text.split()
            self._acts = np.asarray([8.0 if i and self.tokens[i - 1].lower() == "not" else 0.0
                                     for i in range(len(self.tokens))], np.float32)

        def feature(self, f):
            return self._acts

    async def aactivations(self, texts, features):
        return [self._Res(t) for t in texts]


class ListSearch:
    """A corpus search over a list of texts, measured by the fake oracle (same results shape as sampling/search)."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, pattern, limit=30):
        from saexplain.sampling.search import Hit, SearchResult

        self.calls.append(pattern)
        word = pattern.removeprefix("token:").lower()
        hits = []
        for c, text in enumerate(self.texts):
            r = FakeAfterNotOracle._Res(text)
            for t, tok in enumerate(r.tokens):
                if tok.strip(".,").lower() == word:
                    nxt = t + 1 < len(r.tokens)
                    hits.append(Hit(c, t, float(r._acts[t]), float(r._acts[t + 1]) if nxt else 0.0, text,
                                    r.tokens[t + 1] if nxt else ""))
        return SearchResult(pattern, len(hits), hits[:limit])


def test_a_cue_the_corpus_confirms_becomes_the_candidate_that_wins():
    """A feature on the word after "not": the exemplars peak on different words, the token before them is "not"
    every time. The corpus search (explain half) shows it fires after "not", not on it; the candidate "the word
    right after 'not'" is added and wins the measured selection over the LLM's single-token conclusion. Each
    hypothesis's search word is looked up too, and counted as a test."""
    oracle = FakeAfterNotOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", i) for i, r in enumerate(
        oracle._Res(t) for t in ("I do not like it.", "We did not go home.", "They are not here.",
                                 "It is not red.", "You should not worry."))]
    corpus = ListSearch([f"She could not {w} today." for w in ("sleep", "stay", "see", "win", "eat", "say")]
                        + ["I like it.", "We like tea.", "They like him.", "Nothing is here.", "Not a word."])
    record = FeatureRecord(0, 8.0, 0.01, [], windows, search=corpus)

    def handler(req):
        step = step_of(req)
        text = task_message(req)
        if step == "analyze":
            assert "after 'not'" in text and "fires on the next token in 100%" in text  # the counted evidence
            return json.dumps({"observation": "varied words", "token": "the word like", "context": "verbs",
                               "category": "actions", "negative_case": "the word table"})
        if step == "design":
            assert '"search"' in text
            return json.dumps({"probes": [{"probe": "I like it.", "expected": "high"},
                                          {"probe": "We go now.", "expected": "high"}], "search": "like"})
        if step == "conclude":
            return json.dumps({"description": "the word like", "labels": ["like"]})
        if step == "reading":  # the one-shot reading: the same words as the conclusion (one candidate)
            return json.dumps({"explanation": "the word like"})
        if step == "measure_write":
            cand = re.search(r"clear example of this: (.*)", text).group(1)
            if "after" in cand:
                return json.dumps({"sentences": ["I will not stop.", "She did not sing.", "We are not done."]})
            return json.dumps({"sentences": ["I like it.", "They like tea.", "He did like that."]})
        raise AssertionError(f"unexpected step {step}")

    llm, _ = scripted_llm(handler)
    agent = SAGE(SAGEConfig(output_side=False, evidence_candidates=True, max_rounds=1))
    exp = asyncio.run(agent.explain(record, llm, oracle))
    cue = "the word right after 'not' (as in 'not sleep', 'not stay')"  # real examples from the corpus search
    assert exp.description == cue, exp.description
    assert "token:not" in corpus.calls and "like" in corpus.calls
    searched = [t for h in exp.evidence["hypotheses"] for t in h["tests"] if t["kind"] == "search"]
    assert searched and all(t["probe"] == "like" and not t["consistent"] for t in searched)  # "like" never fires
    selection = [s["content"] for s in exp.trace if s["kind"] == "selection"][0]["scores"]
    assert selection[cue]["score"] > selection["the word like"]["score"]


def test_the_analysis_step_sees_the_output_side(wife):
    """Logit lens of the decoder direction and a steering readout (tokens made more likely when the feature is
    added, measured on the tiny model) reach the analysis prompt and the trace."""
    script = Script()
    exp, backend = run_sage(make_record(wife, TEXTS), wife, script)
    analyze = [r for r in backend.requests if step_of(r) == "analyze"][0]
    side = [s["content"] for s in exp.trace if s["kind"] == "output_side"][0]
    assert len(side["logit_lens"]) == 8 and len(side["steering_raised"]) == 8
    assert all(rise > 0 for _, rise in side["steering_raised"])
    assert "Output side" in task_message(analyze) and repr(side["steering_raised"][0][0]) in task_message(analyze)


def test_a_tie_goes_to_the_candidate_the_corpus_counts_back():
    """Sentences written from "a mother" happen to fire on "father" too: both candidates measure fire 1 and
    breadth 1. The tie goes to the evidence candidate (built from corpus counts), not to the shorter text."""
    from saexplain.explain.base import Tracer
    from saexplain.explain.sage import Budget

    oracle = FakeParentsOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", i) for i, r in enumerate(
        oracle._Res(t) for t in ("His mother wept.", "The father spoke."))]
    record = FeatureRecord(0, 8.0, 0.01, [], windows)
    llm, _ = scripted_llm(lambda req: json.dumps({"sentences": ["My mother came.", "Your father left."]}))
    agent = SAGE(SAGEConfig(selection="measured"))
    backed = "parents of a child (mother, father)"
    for order in (["a mother", backed], [backed, "a mother"]):
        trace = Tracer()

        async def go():
            from saexplain.llm import metered

            with metered() as usage:
                return await agent._measured_selection(record, llm, oracle, order, "", trace,
                                                       Budget(agent.cfg, usage), [], "a mother", backed={backed})

        chosen, proxy = asyncio.run(go())
        assert proxy["a mother"] == proxy[backed] == 1.0 and chosen == backed


def test_when_no_written_sentence_fires_the_candidate_the_corpus_backs_is_kept():
    """All candidates measure 0 (the writer's sentences miss the pattern): the evidence candidate — the only one
    measured on real text — is kept rather than the LLM's conclusion."""
    from saexplain.explain.base import Tracer
    from saexplain.explain.sage import Budget

    oracle = FakeParentsOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", 0) for r in [oracle._Res("His mother wept.")]]
    record = FeatureRecord(0, 8.0, 0.01, [], windows)
    llm, _ = scripted_llm(lambda req: json.dumps({"sentences": ["A cat sat.", "Rain fell."]}))
    agent = SAGE(SAGEConfig(selection="measured"))
    trace = Tracer()
    backed = "parents (mother, father)"

    async def go():
        from saexplain.llm import metered

        with metered() as usage:
            return await agent._measured_selection(record, llm, oracle, ["weeping", backed], "", trace,
                                                   Budget(agent.cfg, usage), [], "weeping", backed={backed})

    chosen, proxy = asyncio.run(go())
    assert proxy == {"weeping": 0.0, backed: 0.0} and chosen == backed


def test_a_sentence_end_cue_is_named_as_the_start_of_a_sentence():
    """The cue '.' means a new sentence: the candidate says so (with the real examples), not 'a full stop'."""
    import saexplain.explain.sage as sage

    agent = SAGE(SAGEConfig(evidence_candidates=True))

    async def go(cues):
        from saexplain.explain.base import Tracer
        from saexplain.llm import metered

        llm, _ = scripted_llm(lambda req: pytest.fail("no LLM call without several words"))
        with metered() as usage:
            return await agent._evidence_candidates(llm, {"cues": cues, "words": []}, Tracer(), 0,
                                                    sage.Budget(agent.cfg, usage), [])

    assert asyncio.run(go([(".", [". The", ". He"])])) == ["the first word of a new sentence (after '.'; as in "
                                                            "'. The', '. He')"]
    assert asyncio.run(go([('"', ['" Hello'])])) == ["the word right after a quotation mark (\") (as in '\" Hello')"]


def test_the_strongest_words_kind_is_named_by_meaning_and_a_part_of_speech_is_not_a_kind():
    import saexplain.explain.sage as sage

    agent = SAGE(SAGEConfig(evidence_candidates=True))

    async def go(answer):
        from saexplain.explain.base import Tracer
        from saexplain.llm import metered

        def reply(req):
            assert step_of(req) == "name_set" and "son, father, wife" in task_message(req)
            return json.dumps({"category": answer})

        llm, _ = scripted_llm(reply)
        with metered() as usage:
            return await agent._evidence_candidates(llm, {"cues": [], "words": ["son", "father", "wife"]}, Tracer(),
                                                    0, sage.Budget(agent.cfg, usage), [])

    assert asyncio.run(go("family members")) == ["family members (son, father, wife)"]
    assert asyncio.run(go("Nouns")) == ["the words (son, father, wife)"]


@pytest.mark.parametrize("tolerance,expected", [(0.125, "parents"), (0.25, "mother (mother)")])
def test_an_evidence_candidate_within_the_tolerance_of_the_best_score_is_chosen(tolerance, expected):
    """Sentences written from "parents" fire on both kinds (score 1.0), those from the backed candidate on one
    (0.75): a gap of one kind out of two is beyond the default tolerance, within a tolerance of 0.25."""
    from saexplain.explain.base import Tracer
    from saexplain.explain.sage import Budget

    oracle = FakeParentsOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", i) for i, r in enumerate(
        oracle._Res(t) for t in ("His mother wept.", "The father spoke."))]
    record = FeatureRecord(0, 8.0, 0.01, [], windows)

    def writer(req):
        cand = re.search(r"clear example of this: (.*)", task_message(req)).group(1)
        return json.dumps({"sentences": ["A mother came.", "A father left."] if cand == "parents"
                           else ["A mother came.", "My mother left."]})

    llm, _ = scripted_llm(writer)
    agent = SAGE(SAGEConfig(selection="measured", selection_tolerance=tolerance))

    async def go():
        from saexplain.llm import metered

        with metered() as usage:
            return await agent._measured_selection(record, llm, oracle, ["parents", "mother (mother)"], "", Tracer(),
                                                   Budget(agent.cfg, usage), [], "parents",
                                                   backed={"mother (mother)"})

    chosen, proxy = asyncio.run(go())
    assert proxy == {"parents": 1.0, "mother (mother)": 0.75} and chosen == expected


def test_a_conclusion_that_copies_the_counted_corpus_lines_is_rejected():
    """The counted lines shown with the exemplars are not a description either (seen on the default SAE: the
    conclusion "The feature fires on ';' in 0% (1478 found), …")."""
    oracle = FakeAfterNotOracle()
    windows = [Window(r.tokens, r.feature(0), "explain", "top", i) for i, r in enumerate(
        oracle._Res(t) for t in ("I do not like it.", "We did not go home.", "They are not here."))]
    corpus = ListSearch([f"She could not {w} today." for w in ("sleep", "stay", "see", "win")])
    record = FeatureRecord(0, 8.0, 0.01, [], windows, search=corpus)
    copied = "after 'not' (4 found): fires on the next token in 100%"

    def handler(req):
        step = step_of(req)
        if step == "analyze":
            return json.dumps({"observation": "o", "token": "the word like", "context": "verbs", "category": "acts",
                               "negative_case": "the word table"})
        if step == "design":
            return json.dumps({"probes": [{"probe": "I do not sleep.", "expected": "high"}], "search": "not"})
        if step in ("conclude", "shorten"):
            return json.dumps({"description": copied, "labels": ["not"]})
        if step == "reading":
            return json.dumps({"explanation": "negation"})
        return json.dumps({"sentences": ["I will not stop."]})

    llm, _ = scripted_llm(handler)
    exp = asyncio.run(SAGE(SAGEConfig(output_side=False, max_rounds=1)).explain(record, llm, oracle))
    rejected = [s["content"] for s in exp.trace if s["kind"] == "conclusion_rejected"]
    assert rejected and all("copies" in r["problems"][0] for r in rejected)
    assert exp.description != copied


def test_when_nothing_written_passes_the_rules_the_last_resort_is_the_counted_strongest_token():
    """Hypotheses, labels and both conclusion attempts all copy the counted corpus line: the explanation is "the
    token '…'" (counted, no LLM), not a rule-breaking text (seen on the default SAE before this rule)."""
    from saexplain.explain.base import Tracer
    from saexplain.explain.sage import Budget, Hypothesis, Test

    line = "fires on ';' in 0% (1478 found), 'ishing' in 25% (4 found)"
    copied = "The feature fires on ';' in 0% (1478 found), 'ishing' in 25%"
    h = Hypothesis(1, copied, tests=[Test("a ; b", "high", 1.0, 1.0, True)])
    llm, _ = scripted_llm(lambda req: json.dumps({"description": copied, "labels": [copied]}))
    agent = SAGE(SAGEConfig())
    trace = Tracer()

    async def go():
        from saexplain.llm import metered

        with metered() as usage:
            return await agent._conclude(llm, [h], "", trace, 0, Budget(agent.cfg, usage), [], [line],
                                         last_resort="the token ';'")

    description, _ = asyncio.run(go())
    fallback = next(s["content"] for s in trace.steps if s["kind"] == "conclusion_fallback")
    assert description == "the token ';'" and fallback["from"] == "strongest token"


def water_handler(conclusion: str = "words about water", reading: str | None = "the word wife"):
    """Every hypothesis is wrong (water, rivers, boats: refuted by their probes), the conclusion follows them; the
    one-shot reading (`reading`; None: a reply that never fits) names what the feature fires on."""
    steps: list[str] = []

    def handler(req):
        step = step_of(req)
        steps.append(step)
        text = task_message(req)
        if step == "analyze":
            return json.dumps({"observation": "o", "token": "words about water", "context": "rivers",
                               "category": "boats", "negative_case": "the word husband"})
        if step == "design":
            negative = [h for h in active_ids(req) if re.search(rf"^H{h} \[\w+\] does NOT fire on", text, re.M)]
            return json.dumps({"probes": [{"probe": "Her husband came.", "expected": "none"}] if negative else
                               [{"probe": p, "expected": "high"} for p in ("The river ran fast.", "Boats sail on.")]})
        if step == "review":
            return json.dumps({"new_hypotheses": []})
        if step in ("conclude", "shorten"):
            return json.dumps({"description": conclusion, "labels": ["water"]})
        if step == "reading":
            return json.dumps({"explanation": reading}) if reading else "no JSON here"
        if step == "measure_write":
            return measure(req)
        raise AssertionError(f"unexpected step {step}")

    return handler, steps


@pytest.mark.parametrize("reading", [True, False])
def test_the_one_shot_reading_is_a_candidate_and_is_kept_when_it_measures_best(wife, reading):
    """The tested hypotheses all missed (water); the one-shot reading of the same top windows ("the word wife")
    is measured with the other candidates and wins; without it, the agent is left with its wrong conclusion."""
    handler, steps = water_handler()
    llm, _ = scripted_llm(handler)
    exp = asyncio.run(SAGE(SAGEConfig(selection="measured", output_side=False, reading=reading)).explain(
        make_record(wife, TEXTS), llm, wife))
    scores = next(s["content"] for s in exp.trace if s["kind"] == "selection")["scores"]
    if reading:
        assert steps.count("reading") == 1 and steps[0] == "reading"  # read once, before the hypotheses
        assert exp.description == "the word wife" and scores["the word wife"]["fire"] == 1.0
        assert scores["words about water"]["fire"] == 0.0
    else:
        assert "reading" not in steps and exp.description != "the word wife" and "the word wife" not in scores
    assert exp.status == "ok", exp.reason


def test_a_failed_reading_is_a_fault_and_the_explanation_is_degraded(wife):
    handler, steps = water_handler(reading=None)
    llm, _ = scripted_llm(handler)
    exp = asyncio.run(SAGE(SAGEConfig(selection="measured", output_side=False)).explain(
        make_record(wife, TEXTS), llm, wife))
    assert steps.count("reading") == 2  # the reply and its one corrective retry
    assert exp.status == "degraded" and "reading" in exp.reason
    assert any(s["kind"] == "error" and s["content"]["step"] == "reading" for s in exp.trace)


def test_a_conclusion_quoting_a_word_the_agent_never_saw_is_rejected(wife):
    """The conclusion prompt's own example ('only after "can't"') copied onto a feature whose texts hold no
    "can't": rejected with the reason and redone; a quoted word that the exemplars hold passes."""
    handler, steps = water_handler(conclusion="fires on 'wife' only after \"can't\"")
    llm, backend = scripted_llm(handler)
    exp = asyncio.run(SAGE(SAGEConfig(selection="none", output_side=False)).explain(
        make_record(wife, TEXTS), llm, wife))
    rejected = [s["content"] for s in exp.trace if s["kind"] == "conclusion_rejected"]
    assert rejected and "quotes 'can't'" in rejected[0]["problems"][0] and "'wife'" not in rejected[0]["problems"][0]
    assert steps[-2:] == ["conclude", "shorten"] and "can't" not in exp.description


def test_unsupported_quotes():
    from saexplain.explain.sage import unsupported_quotes

    support = "1. a long time <<ago>> we met\n2. in <<fl>>orida it is warm\nfires on 'ago' in 80% (12 found)"
    assert unsupported_quotes("fires on 'ago' only after 'can't'", support) == ["can't"]
    assert unsupported_quotes("the word ‘fl’ and \"Ago\"", support) == []  # curly quotes, case, a marked piece
    assert unsupported_quotes("the word “paris”", support) == ["paris"]
    assert unsupported_quotes("it can't be the king's", support) == []  # apostrophes inside words are not quotes
    # a phrase across marked tokens and a line break is still seen
    assert unsupported_quotes("'Federal Communications' and 'long time ago'",
                              "the <<Federal>> <<Communications>> Commission\na long time\n<<ago>>") == []


def test_only_whole_words_are_named_as_a_kind():
    """The naming call gets the strongest tokens that are whole words in the corpus: 'sc' of "scandal" and 'acc' of
    "accused" are word pieces (held-out feature 1167 was named "colors (sc, acc, flash)"); they stay in the counted
    line, and are listed as fragments in the trace."""
    from saexplain.explain.base import Tracer
    from saexplain.sampling.search import Hit, SearchResult

    following = {"sc": "andal", "acc": "used", "red": " car", "blue": "."}

    def search(pattern, limit=30):
        tok = pattern.removeprefix("token:")
        if tok not in following:
            return SearchResult(pattern, 0)
        return SearchResult(pattern, 5, [Hit(i, 1, 8.0, 0.0, f"the [{tok}]", following[tok]) for i in range(5)])

    windows = [Window([" the", f" {t}", following[t]], np.array([0.0, 8.0, 0.0]), "explain", "top", i)
               for i, t in enumerate(following)]
    record = FeatureRecord(0, 8.0, 0.01, [], windows, search=search)
    found = SAGE(SAGEConfig())._corpus_evidence(record, Tracer())
    assert found["words"] == ["red", "blue"] and found["fragments"] == ["sc", "acc"]
    assert "'sc' in 100%" in found["lines"][0]


def test_the_reading_explainer_is_part_of_sages_fingerprint(monkeypatch):
    """SAGE's explanations depend on the one-shot reading: another reader (code or settings) is another agent, so a
    stored SAGE explanation is made again, as for an edit to SAGE itself."""
    import saexplain.explain.sage as sage
    from saexplain.explain.oneshot import OneShot, OneShotConfig

    before = SAGE().fingerprint()
    assert SAGE().fingerprint() == before and SAGE(SAGEConfig(reading=False)).fingerprint() != before

    class OtherReader(OneShot):  # defined in this file: other code
        pass

    monkeypatch.setattr(sage, "OneShot", OtherReader)
    other_code = SAGE().fingerprint()
    assert other_code != before

    class MoreExamples(OneShot):  # the same file as OtherReader: only the settings differ
        def __init__(self, cfg=None):
            super().__init__(OneShotConfig(examples=12))

    monkeypatch.setattr(sage, "OneShot", MoreExamples)
    assert SAGE().fingerprint() not in (before, other_code)
