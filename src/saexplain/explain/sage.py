"""SAGE (Han et al., arXiv 2511.20820): an agent that explains a feature by testing hypotheses on the real
subject model + SAE.

GET_EXEMPLARS → ANALYZE_EXEMPLARS (observation, 3 hypotheses — tokens, context, category — and a negative case) → rounds of
DESIGN_TEST (probes + expected level, one short call per active hypothesis) → RUN_TEST (every probe of
the round in one oracle batch) → ANALYZE_RESULT + UPDATE → REVIEW_ALL → FINAL_CONCLUSION (description + labels),
then a final selection among the candidates, measured on the subject model.

Measured actions besides probes: corpus search over the explain half of the latent cache (counted evidence for the
strongest tokens and the tokens before them; one search word per tested hypothesis), and the output side (logit
lens, steering readout) for the analysis step. Candidates built from that evidence ("the word right after 'not'",
the strongest tokens' kind) join the final selection, and so does the one-shot explainer's reading of the top
windows (asked first: one call), kept only where it measures best. A final text may quote only words the agent saw
fire (exemplars, corpus lines, probes that fired).

The LLM proposes hypotheses, probes and rewrites; by default the verdicts are computed from measurements
(a probe is consistent when it measured what the LLM said it expected, relative to the feature's max):
CONFIRMED needs ≥ 2 consistent tests and none contradicting, REFUTED ≥ 2 contradicting and none consistent,
mixed results are REFINED (rewritten by the LLM, then tested afresh), and no hypothesis stays UNCHANGED after
2 tests. `verdict="llm"` lets the LLM judge instead (for strong LLMs; an UNCHANGED after 2 tests is replaced by
the measured verdict). Budgets (LLM calls, tokens, probes, seconds) are checked before every step; when one
runs out the agent concludes with what it has and records why. Corpus text is data: the agent's actions are
measurements (probes, searches), and every reply must fit a JSON schema."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from saexplain.config import Config
from saexplain.explain.base import EXPLAINERS, Explainer, Explanation, Tracer, firing_tokens, format_window
from saexplain.explain.oneshot import OneShot
from saexplain.explain.rules import clean_text, conclusion_problems, norm
from saexplain.llm import LLMError, Usage, metered
from saexplain.llm.prompts import Template
from saexplain.sampling.record import FeatureRecord

ACTIVE, CONFIRMED, REFUTED = "ACTIVE", "CONFIRMED", "REFUTED"
HYP_CHARS = 120  # a hypothesis is one specific phrase; long ones are where small LLMs start to loop
HYP_KINDS = ("token", "context", "category")
PROBE_CHARS = 120
CONCLUDE_TOKENS, SHORTEN_TOKENS = 1500, 300  # what the conclusion and its redo (a short rewrite) are kept
SHORT_SCHEMA = {"type": "object", "required": ["description"], "properties": {
    "description": {"type": "string", "minLength": 3, "maxLength": 90}}}


class SAGEConfig(Config):
    cli_prefix: ClassVar[str] = "sage_"
    exemplars: int = Field(10, ge=1, description="top windows of the explain pool shown (GET_EXEMPLARS)")
    window: int = Field(24, ge=4, description="tokens per exemplar (around the strongest)")
    probes_per_round: int = Field(2, ge=1, le=4, description="probes per active hypothesis per round")
    max_rounds: int = Field(3, ge=1, description="test/review rounds")
    max_refinements: int = Field(2, ge=0, description="rewrites of one hypothesis before mixed results refute it")
    verdict: Literal["measured", "llm"] = Field("measured", description="who decides CONFIRMED/REFUTED/REFINED")
    high: float = Field(0.3, gt=0, le=1, description="'high' holds when a probe reaches this fraction of the max")
    low: float = Field(0.1, ge=0, le=1, description="'none' holds when a probe stays below this fraction of the max")
    selection: Literal["measured", "embedding", "none"] = Field(
        "measured", description="final pick among the candidates: measured (sentences written from each, run "
        "through the oracle: how many fire, on how many of the kinds of token the explain pool fires on), "
        "embedding (the older MiniLM proxy) or none")
    selection_sentences: int = Field(3, ge=1, le=6, description="sentences written per candidate (measured "
                                     "selection)")
    max_candidates: int = Field(4, ge=2, le=6, description="candidates the measured selection compares")
    selection_tolerance: float = Field(0.125, ge=0, le=1, description="an evidence candidate (backed by corpus "
                                       "counts) within this much of the best measured score is chosen (0.125: one "
                                       "kind of token out of four in the breadth half of the score)")
    corpus_search: bool = Field(True, description="search the explain half of the cached corpus: counted "
                                "evidence for the strongest tokens and the tokens before them, and one search per "
                                "tested hypothesis (never a score-pool context)")
    search_hits: int = Field(30, ge=3, description="matches read per corpus search")
    output_side: bool = Field(True, description="show the analysis step the decoder direction's logit lens and a "
                              "steering readout (tokens made more likely when the feature is added)")
    evidence_candidates: bool = Field(True, description="add candidates built from the counted evidence to the "
                                      "final selection: the word after a cue the corpus confirms, and the kind of "
                                      "word the strongest tokens share (one short LLM call)")
    reading: bool = Field(True, description="add the one-shot reading of the explain pool's top windows (the "
                          "oneshot explainer's prompt and settings: one call) to the final selection, so the measured "
                          "choice can keep it where the tested hypotheses describe the feature worse")
    max_llm_calls: int = Field(12, ge=2, description="budget: LLM calls per feature (retries count)")
    max_tokens: int = Field(40_000, ge=500, description="budget: prompt + reply tokens per feature")
    max_probes: int = Field(40, ge=1, description="budget: probe sentences per feature")
    max_seconds: float = Field(900.0, gt=0, description="budget: wall time per feature, less its waits for an "
                                                         "LLM slot held by other features")
    reply_tokens: int = Field(300, ge=64, description="reply length cap per call")
    design_temperature: float = Field(0.7, ge=0, description="sampling temperature of probe design (seeded)")
    seed: int = Field(0, description="seed of the sampled steps")


@dataclass
class Test:
    probe: str
    expected: str  # "high" | "none"
    measured: float = 0.0  # max activation on the probe
    relative: float = 0.0  # measured / the feature's max
    consistent: bool = False
    tokens: list[str] = field(default_factory=list)
    acts: list[float] = field(default_factory=list)
    kind: str = "probe"  # or "search": `probe` is then the searched word, `relative` the share of matches firing
    matches: int = 0  # search: matches in the explain half of the corpus (hits read: `read`)
    read: int = 0


@dataclass
class Hypothesis:
    id: int
    text: str
    negative: bool = False
    status: str = ACTIVE
    tests: list[Test] = field(default_factory=list)  # since the last rewrite
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier texts with their tests
    refinements: int = 0

    @property
    def consistent(self) -> int:
        return sum(t.consistent for t in self.tests)

    @property
    def contradicting(self) -> int:
        return sum(not t.consistent for t in self.tests)

    @property
    def tested(self) -> bool:
        return bool(self.tests) or bool(self.history)


def measured_verdict(h: Hypothesis) -> str:
    """CONFIRMED / REFUTED / REFINED / UNCHANGED from the tests since the last rewrite."""
    if len(h.tests) < 2:
        return "UNCHANGED"
    if h.contradicting == 0:
        return CONFIRMED
    if h.consistent == 0:
        return REFUTED
    return "REFINED"


@lru_cache(maxsize=1)
def _prompts() -> dict[str, str]:
    return tomllib.loads((Path(__file__).parent / "prompts" / "sage.toml").read_text())


def _message(step: str, **values) -> list[tuple[str, str]]:
    p = _prompts()
    if "exemplars" in values:
        values["exemplars"] = p["exemplars"].format(exemplars=values["exemplars"])
    return Template(f"sage.{step}", p["system"].strip(), p[step].strip()).chat(**values)


class Budget:
    def __init__(self, cfg: SAGEConfig, usage: Usage):
        self.cfg, self.usage, self.t0, self.probes = cfg, usage, time.perf_counter(), 0
        # kept for after testing: the conclusion (~1.5k tokens), its one redo (a short rewrite), the call naming
        # the strongest tokens' kind (~250 tokens) and, for the measured selection, one short writing call per
        # candidate (~300 tokens each: no exemplars in it)
        base = CONCLUDE_TOKENS + SHORTEN_TOKENS
        self.reserve = (2 + cfg.max_candidates, base + 300 * cfg.max_candidates) if cfg.selection == "measured" \
            else (2, base)
        if cfg.evidence_candidates:
            self.reserve = (self.reserve[0] + 1, self.reserve[1] + 250)

    def exhausted(self, reserve_calls: int | None = None, reserve_tokens: int | None = None) -> str | None:
        """Why no further step may start (None: it may). The reserve (default: what the conclusion and the
        measured selection need) keeps calls and tokens for the steps after testing; a structured call may need
        a corrective retry, so a step needs 2 calls of headroom."""
        c = self.cfg
        default = reserve_calls is None
        if default:
            reserve_calls, reserve_tokens = self.reserve
        # cached replies count as calls and tokens: a resumed run (its earlier replies now cached) must take
        # the same steps as an uninterrupted one
        u = self.usage
        if u.calls + u.cached + u.failures + 2 + reserve_calls > c.max_llm_calls:
            return f"max_llm_calls ({c.max_llm_calls})"
        used = u.tokens_in + u.tokens_out + u.tokens_cached
        if reserve_tokens is None:
            reserve_tokens = reserve_calls * 1500
        if default:  # a testing step must fit beside the reserve, not eat into it: its likely size is added
            reserve_tokens += self.step_tokens()
        if used + reserve_tokens >= c.max_tokens:
            return f"max_tokens ({c.max_tokens})"
        # the feature's own time: waits for an LLM slot held by other features' requests are not counted
        if time.perf_counter() - self.t0 - u.queued >= c.max_seconds:
            return f"max_seconds ({c.max_seconds:g})"
        return None

    def step_tokens(self) -> int:
        """The likely size of the next testing step: 1.25 × the mean tokens per call so far (prompts grow as
        results accumulate), at least 1,000 tokens."""
        u = self.usage
        n = u.calls + u.cached
        mean = (u.tokens_in + u.tokens_out + u.tokens_cached) / n if n else 0
        return max(1000, int(1.25 * mean))

    def probes_left(self) -> int:
        return self.cfg.max_probes - self.probes


@EXPLAINERS.register("sage")
class SAGE(Explainer):
    name = "sage"
    Config = SAGEConfig
    prompts = ("sage", "oneshot")  # oneshot: the reading candidate's prompt

    def fingerprint(self) -> str:
        """Its own, plus the one-shot explainer's code and settings (the reading candidate is that explainer's)."""
        reader = OneShot()
        return hashlib.sha256(f"{super().fingerprint()}:{reader.cfg.to_json()}".encode()
                              + Path(inspect.getfile(OneShot)).read_bytes()).hexdigest()[:16]

    # ----------------------------------------------------------------------------------------- helpers
    def _state(self, hyps: list[Hypothesis], header: str, focus: list[Hypothesis]) -> str:
        ids = {h.id for h in focus}
        lines = []
        for h in hyps:
            kind = "does NOT fire on: " if h.negative else ""
            lines.append(f"H{h.id} [{h.status}] {kind}{h.text}")
            for old in h.history:
                lines.append(f"   (earlier version: {old['text']}; {old['consistent']}/{old['tests']} probes as predicted)")
            for t in h.tests:
                mark = "as predicted" if t.consistent else "NOT as predicted"
                if t.kind == "search":
                    lines.append(f"   real text: \"{t.probe}\" found {t.matches} times; of {t.read} read, the "
                                 f"feature fires on it or the next token in {round(t.relative * t.read)} "
                                 f"(expected {t.expected}: {mark})")
                    continue
                lines.append(f"   probe: \"{t.probe}\" expected {t.expected}, measured {10 * t.relative:.1f}/10 "
                             f"({mark}); tokens: {_marked(t)}")
        if focus:
            lines.append(f"\n{header}: " + ", ".join(f"H{h.id}" for h in hyps if h.id in ids))
        return "\n".join(lines)

    async def _ask(self, llm, step: str, schema: dict, trace: Tracer, feature: int, temperature: float = 0.0,
                   seed: int | None = None, **values) -> Any:
        messages = _message(step, **values)
        trace("prompt", {"step": step, "text": messages[-1][1]})
        obj, comp = await llm.generate_json(messages, schema, max_tokens=self.cfg.reply_tokens, feature=feature,
                                            temperature=temperature, seed=seed)
        trace("reply", {"step": step, "json": obj})
        return obj

    # -------------------------------------------------------------------------------------------- run
    async def run(self, record: FeatureRecord, llm, oracle, trace: Tracer) -> Explanation:
        cfg = self.cfg
        with metered() as usage:
            budget = Budget(cfg, usage)
            return await self._run(record, llm, oracle, trace, budget)

    async def _run(self, record, llm, oracle, trace, budget: Budget) -> Explanation:
        cfg, f = self.cfg, record.feature
        # GET_EXEMPLARS
        tops = [w for w in record.activating("explain") if w.kind == "top"][: cfg.exemplars]
        if not tops:
            raise LLMError(f"feature {f} has no activating windows in its explain pool")
        exemplars = "\n".join(f"{i + 1}. {format_window(*w.cut(cfg.window), record.max_act)}"
                              for i, w in enumerate(tops)) + "\n" + firing_tokens(tops)
        # measured evidence without an LLM: the strongest tokens and the tokens before them looked up in real
        # text (explain half of the corpus), and the output side for the analysis step
        found = self._corpus_evidence(record, trace) if cfg.corpus_search and record.search is not None else {}
        if found.get("lines"):
            exemplars += "\nIn other real texts: " + "\n".join(found["lines"])
        output_side = await self._output_side(record, oracle, trace) if cfg.output_side else ""
        trace("exemplars", exemplars)
        faults: list[str] = []  # LLM faults worked around: the explanation is then degraded, not ok
        reading = await self._reading(record, llm, oracle, trace, faults) \
            if cfg.reading and cfg.selection != "none" else None

        # ANALYZE_EXEMPLARS (always runs: without it there is nothing to conclude from). Three named kinds of
        # hypothesis (the tokens, their context, their category) guide a small LLM better than examples,
        # which it copies.
        phrase = {"type": "string", "minLength": 3, "maxLength": HYP_CHARS}
        schema = {"type": "object", "required": ["observation", *HYP_KINDS, "negative_case"], "properties": {
            "observation": {"type": "string", "maxLength": 200}, **dict.fromkeys(HYP_KINDS, phrase),
            "negative_case": phrase}}
        obj = await self._ask(llm, "analyze", schema, trace, f, exemplars=exemplars, output_side=output_side)
        hyps = [Hypothesis(i + 1, t) for i, t in enumerate(_dedupe([obj[k] for k in HYP_KINDS]))]
        hyps.append(Hypothesis(len(hyps) + 1, obj["negative_case"].strip(), negative=True))
        trace("status", {h.id: {"status": h.status, "text": h.text, "negative": h.negative} for h in hyps})

        stop = None
        rounds = 0
        while rounds < cfg.max_rounds:
            active = [h for h in hyps if h.status == ACTIVE]
            if not active:
                if any(h.status == CONFIRMED and not h.negative for h in hyps):
                    break
                # REVIEW_ALL: nothing confirmed and nothing left to test → new hypotheses from all results
                if (stop := budget.exhausted()):
                    break
                try:
                    new = await self._review(llm, hyps, exemplars, trace, f)
                except LLMError as e:
                    faults.append(f"review: {e}")
                    trace("error", {"step": "review", "error": str(e)})
                    stop = "llm_error"
                    break
                if not new:
                    break
                for text in new:
                    hyps.append(Hypothesis(len(hyps) + 1, text))
                trace("status", {h.id: {"status": h.status, "text": h.text} for h in hyps[-len(new):]})
                continue
            rounds += 1
            if (stop := budget.exhausted()) or budget.probes_left() <= 0:
                stop = stop or f"max_probes ({cfg.max_probes})"
                break
            # DESIGN_TEST for every active hypothesis in one reply
            try:
                tests, searches = await self._design(llm, hyps, active, exemplars, trace, record, budget)
            except LLMError as e:
                faults.append(f"design: {e}")
                trace("error", {"step": "design", "error": str(e)})
                stop = "llm_error"
                break
            tests = tests[: budget.probes_left()]
            if not tests:
                stop = "no usable probes"
                break
            # corpus search: each hypothesis's word looked up in real text (explain half only); with enough
            # matches, a test like a probe: the share firing on the word or the token after it
            for h, term in searches:
                self._search_test(record, h, term, trace)
            # RUN_TEST: all probes of the round in one oracle batch
            budget.probes += len(tests)
            results = await oracle.aactivations([t.probe for _, t in tests], [f])
            for (h, t), res in zip(tests, results):
                col = res.feature(f)
                t.measured = float(col.max()) if col.size else 0.0
                t.relative = t.measured / record.max_act if record.max_act > 0 else 0.0
                t.tokens, t.acts = list(res.tokens), [round(float(a), 4) for a in col]
                # ANALYZE_RESULT: the expectation against the measurement
                t.consistent = t.relative >= cfg.high if t.expected == "high" else t.relative < cfg.low
                h.tests.append(t)
                trace("probe", {"hypothesis": h.id, "probe": t.probe, "expected": t.expected,
                                "measured": t.measured, "relative": t.relative, "consistent": t.consistent,
                                "tokens": t.tokens, "acts": t.acts})
            # UPDATE
            verdicts = {h.id: measured_verdict(h) for h in active}
            if cfg.verdict == "llm" and not budget.exhausted():
                try:
                    verdicts = await self._judge(llm, hyps, active, verdicts, exemplars, trace, f)
                except LLMError as e:
                    faults.append(f"judge: {e}")
                    trace("error", {"step": "judge", "error": str(e)})
            to_refine = []
            for h in active:
                v = verdicts[h.id]
                if v == "REFINED" and h.refinements >= cfg.max_refinements:
                    v = REFUTED  # mixed results after every rewrite allowed: it does not hold as stated
                if v in (CONFIRMED, REFUTED):
                    h.status = v
                elif v == "REFINED":
                    to_refine.append(h)
                trace("status", {"hypothesis": h.id, "verdict": v, "consistent": h.consistent,
                                 "contradicting": h.contradicting})
            if to_refine:
                if (stop := budget.exhausted()):
                    for h in to_refine:  # no budget left to rewrite: mixed evidence does not confirm
                        h.status = REFUTED
                    break
                try:
                    await self._refine(llm, hyps, to_refine, exemplars, trace, f)
                except LLMError as e:
                    faults.append(f"refine: {e}")
                    trace("error", {"step": "refine", "error": str(e)})
                    for h in to_refine:
                        h.status = REFUTED
                    stop = "llm_error"
                    break
        else:
            if any(h.status == ACTIVE for h in hyps):
                stop = f"max_rounds ({cfg.max_rounds})"
        trace("stop", {"reason": stop or "all hypotheses decided"})

        # FINAL_CONCLUSION from tested hypotheses only, checked by rules (redone once, else the best measured
        # hypothesis that passes them)
        # what a conclusion must not copy: the exemplars, and the counted lines shown with them ("fires on ';' in
        # 0% (1478 found)" came back as a conclusion)
        exemplar_texts = [w.text for w in tops] + found.get("lines", [])
        # what a quoted word in a final text must have been seen in: real text where the feature fires (the
        # exemplars as shown, the counted corpus lines and the matches read after a confirmed cue) and the probes
        # that fired clearly
        support = "\n".join([exemplars] + [x for _, shown in found.get("cues", []) for x in shown]
                             + [t.probe for h in hyps for t in h.tests if t.kind != "search" and t.relative >= cfg.high])
        # the last resort when nothing passes the rules: the counted strongest token, not a rule-breaking text
        strongest = Counter(_kind(w.tokens[w.peak]) for w in tops).most_common(1)[0][0]
        description, labels = await self._conclude(llm, hyps, exemplars, trace, f, budget, faults, exemplar_texts,
                                                   last_resort=f"the token '{strongest}'", support=support)
        negative = next((h.text for h in hyps if h.negative), None)
        # the conclusion first, then what the tests supported (confirmed first, most probes as predicted), then the
        # conclusion's labels: the cap keeps the measured hypotheses before the labels
        supported = sorted((h for h in hyps if not h.negative and h.tested and h.status != REFUTED),
                           key=lambda h: (h.status == CONFIRMED, h.consistent - h.contradicting), reverse=True)
        measured = await self._evidence_candidates(llm, found, trace, f, budget, faults) \
            if cfg.evidence_candidates else []
        # the reading second: with the conclusion, the two readings of the whole evidence, before the narrower
        # evidence candidates and hypotheses
        candidates = [c for c in _dedupe([description] + ([reading] if reading else []) + measured
                                         + [h.text for h in supported] + labels)
                      if not _problems(c, exemplar_texts, negative, support)] or [description]
        chosen, proxy = description, {}
        if cfg.selection == "measured" and len(candidates) > 1:
            chosen, proxy = await self._measured_selection(record, llm, oracle, candidates[: cfg.max_candidates],
                                                           exemplars, trace, budget, faults, description,
                                                           backed=set(measured))
        elif cfg.selection == "embedding" and len(candidates) > 1:
            chosen, proxy = await _select(record, candidates)
            trace("selection", {"proxy": "embedding AUROC on the explain pool", "scores": proxy, "chosen": chosen})
        evidence = {
            "hypotheses": [{"id": h.id, "text": h.text, "negative": h.negative, "status": h.status,
                            "refinements": h.refinements, "history": h.history,
                            "tests": [{k: v for k, v in t.__dict__.items() if k not in ("tokens", "acts")}
                                      for t in h.tests]} for h in hyps],
            "stop_reason": stop or "all hypotheses decided", "rounds": rounds, "probes": budget.probes,
            "conclusion": description, "candidates": proxy, "verdict_mode": cfg.verdict}
        if faults:
            evidence["faults"] = faults
            return Explanation(chosen, labels, evidence, status="degraded",
                               reason=f"LLM failed in {len(faults)} step(s), concluded without them: {faults[0]}")
        return Explanation(chosen, labels, evidence)

    # ------------------------------------------------------------------------------------------ steps
    async def _design(self, llm, hyps, active, exemplars, trace, record, budget: Budget
                      ) -> tuple[list[tuple[Hypothesis, Test]], list[tuple[Hypothesis, str]]]:
        """DESIGN_TEST: one short call per active hypothesis (a small LLM asked for every hypothesis's probes
        at once writes one probe for all of them); the probes of the round then run as one oracle batch. With
        corpus search, each reply also names a word of the hypothesis to look up in real text."""
        f = record.feature
        k = self.cfg.probes_per_round
        search = self.cfg.corpus_search and record.search is not None
        schema = {"type": "object", "required": ["probes", *(["search"] if search else [])], "properties": {
            "probes": {"type": "array", "minItems": 1, "maxItems": k, "items": {
                "type": "object", "required": ["probe", "expected"], "properties": {
                    "probe": {"type": "string", "minLength": 3, "maxLength": PROBE_CHARS},
                    "expected": {"type": "string", "enum": ["high", "none"]}}}},
            **({"search": {"type": "string", "minLength": 1, "maxLength": 40}} if search else {})}}
        step = "design_search" if search else "design"

        def ask(h: Hypothesis):
            return self._ask(llm, step, schema, trace, f, exemplars=exemplars, k=k, hid=h.id,
                             state=self._state([h], "to test now", [h]),
                             temperature=self.cfg.design_temperature, seed=self.cfg.seed + len(h.tests))

        replies: list[tuple[Hypothesis, dict]] = []
        if getattr(getattr(llm, "backend", None), "local", True):
            # one slot (an in-process LLM): one call after the other, each while the budget allows it
            for h in active:
                if budget.exhausted():
                    break
                replies.append((h, await ask(h)))
        else:
            # a server: the calls of the round together, as many as the budget allows even if every one of
            # them needs its corrective retry (so the budget holds whatever the replies)
            n = 0
            while n < len(active) and budget.exhausted(reserve_calls=budget.reserve[0] + 2 * n,
                                                       reserve_tokens=budget.reserve[1] + 3000 * n) is None:
                n += 1
            results = await asyncio.gather(*(ask(h) for h in active[:n]), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            replies = list(zip(active[:n], results))
        out, searches = [], []
        for h, obj in replies:
            if obj.get("search", "").strip():
                searches.append((h, obj["search"].strip()))
            earlier = {t.probe for t in h.tests} | {old.get("probe") for old in h.history}
            for item in obj["probes"][:k]:
                probe = item["probe"].strip()
                if probe in earlier:
                    continue
                earlier.add(probe)
                # a negative case says what should NOT fire: its probes expect silence whatever the reply says
                out.append((h, Test(probe, "none" if h.negative else item["expected"])))
        return out, searches

    def _corpus_evidence(self, record, trace: Tracer) -> dict:
        """Counted lines for every prompt: the explain pool's strongest tokens (at the peaks of all its activating
        windows) looked up in real text — how often the feature fires on each — and the tokens just before the
        peaks — how often it fires on the token *after* each, against its rate on any token. A cue the corpus
        confirms (it fires after the cue far above its base rate, not on the cue) becomes a candidate."""
        cfg = self.cfg
        wins = record.activating("explain")
        peaks: Counter[str] = Counter(_kind(w.tokens[w.peak]) for w in wins)
        # whitespace before a peak is no cue to search (its kind is a repr); an apostrophe or "'s" is
        before: Counter[str] = Counter(_kind(w.tokens[w.peak - 1]) for w in wins
                                       if w.peak > 0 and w.tokens[w.peak - 1].strip())
        level = cfg.low * record.max_act
        base = max(record.frequency, 1e-4)
        lines, fires_on, cues = [], [], []
        whole: dict[str, float] = {}  # share of the matches where the token is a whole word, not a word's start
        for tok, _ in peaks.most_common(4):
            res = record.search(f"token:{tok}", cfg.search_hits)
            if len(res.hits) >= 3:
                fires_on.append((tok, res.share(level, "at"), res.matches))
                whole[tok] = float(np.mean([not h.following[:1].isalnum() for h in res.hits]))
        if fires_on:
            lines.append("fires on " + ", ".join(f"'{t}' in {round(100 * sh)}% ({n} found)" for t, sh, n in fires_on))
        seen = 2 if len(wins) <= 8 else 3  # a cue seen once (or twice among many windows) is no pattern
        for tok, n in before.most_common(3):
            if n < seen:
                continue
            res = record.search(f"token:{tok}", cfg.search_hits)
            if len(res.hits) < 3:
                continue
            after, at = res.share(level, "after"), res.share(level, "at")
            # shown only when the corpus confirms it (an uninformative "after 'the'" line misleads a small LLM)
            if after >= 0.2 and after >= 10 * base and at <= after / 3:
                # with real examples of it firing after the cue (the writer of the selection's sentences gets
                # "as in 'not stop', 'not say'" rather than inventing "Not a mistake.")
                shown = list(dict.fromkeys(f"{tok} {h.following.strip()}" for h in res.hits
                                           if h.after >= level and h.following.strip()))[:2]
                cues.append((tok, shown))
                lines.append(f"after '{tok}' ({res.matches} found): fires on the next token in {round(100 * after)}%, "
                             f"on '{tok}' itself in {round(100 * at)}% (on any token: {100 * record.frequency:.1f}%)")
        # a cue is the pattern when the tokens after it vary (the strongest one under half of the peaks)
        varied = bool(wins) and peaks.most_common(1)[0][1] < len(wins) / 2
        # the words whose kind the naming call is asked for: whole words only ('sc' of "scandal", 'fl' of
        # "Florida" were named "colors (sc, acc, flash)" on held-out features)
        words = [t for t, share, _ in fires_on if share >= 0.5 and t.isalpha() and whole[t] >= 0.5]
        out = {"lines": lines, "cues": cues if varied else [], "words": words,
               "fragments": [t for t, _, _ in fires_on if whole[t] < 0.5]}
        trace("corpus_evidence", {"peaks": dict(peaks.most_common(8)), "before": dict(before.most_common(8)),
                                  **out})
        return out

    async def _output_side(self, record, oracle, trace: Tracer) -> str:
        """The decoder direction's logit lens and a steering readout, as two lines for the analysis step."""
        lens = oracle.logit_lens(record.feature, 8)
        raised = await asyncio.to_thread(oracle.steering_readout, record.feature, 8)
        text = ("\nOutput side (what the feature does to the next token): its direction promotes "
                + ", ".join(repr(t) for t, _ in lens.top)
                + "; added to the model it makes these more likely: " + ", ".join(repr(t) for t, _ in raised))
        trace("output_side", {"logit_lens": lens.top, "steering_raised": raised})
        return text

    async def _reading(self, record, llm, oracle, trace: Tracer, faults: list[str]) -> str | None:
        """The one-shot explainer's reading of the top windows (its prompt and settings, one call): a candidate
        for the final selection, measured like the others. A failed call is a fault (the explanation is then
        degraded), not a stop."""
        try:
            exp = await OneShot().run(record, llm, oracle, trace)
        except LLMError as e:
            faults.append(f"reading: {e}")
            trace("error", {"step": "reading", "error": str(e)})
            return None
        text = clean_text(exp.description)
        trace("reading", text)
        return text or None

    async def _evidence_candidates(self, llm, found: dict, trace: Tracer, f: int, budget: Budget,
                                   faults: list[str]) -> list[str]:
        """Candidates from the counted evidence: "the word right after 'not'" for cues the corpus confirmed, and
        the kind of word the strongest tokens share when several different ones fire in real text (named by
        one short LLM call: "family relations (son, father, wife)")."""
        out = []
        if found.get("cues"):
            cues = found["cues"][:2]
            shown = [x for _, ex in cues for x in ex][:2]
            examples = ", ".join(f"'{x}'" for x in shown)
            if all(t in _SENTENCE_END for t, _ in cues):  # what the cue means, not only its surface
                out.append("the first word of a new sentence (after " + " or ".join(f"'{t}'" for t, _ in cues)
                           + (f"; as in {examples}" if shown else "") + ")")
            else:
                out.append("the word right after " + " or ".join(_cue(t) for t, _ in cues)
                           + (f" (as in {examples})" if shown else ""))
        words = found.get("words", [])
        keep = (self.cfg.max_candidates, 300 * self.cfg.max_candidates) if self.cfg.selection == "measured" else (0, 0)
        if len(words) >= 2 and budget.exhausted(reserve_calls=keep[0] - 2, reserve_tokens=keep[1]) is None:
            schema = {"type": "object", "required": ["category"], "properties": {
                "category": {"type": "string", "minLength": 2, "maxLength": 40}}}
            try:
                # asked as "examples of what?" with two worked examples: asked for "the kind of word", the 1.5B
                # LLM answered "noun" or "adjectives"
                obj = await self._ask(llm, "name_set", schema, trace, f, words=", ".join(words[:4]))
                kind = clean_text(obj["category"])
                if norm(kind) in _PARTS_OF_SPEECH:  # not a meaning: the members alone, listed
                    trace("evidence_candidates", {"rejected_kind": kind})
                    kind = "the words"
                if kind and norm(kind) not in {norm(w) for w in words}:
                    out.append(f"{kind} ({', '.join(words[:4])})")
            except LLMError as e:
                faults.append(f"name_set: {e}")
                trace("error", {"step": "name_set", "error": str(e)})
        trace("evidence_candidates", out)
        return out

    def _search_test(self, record, h: Hypothesis, term: str, trace: Tracer) -> None:
        """A hypothesis's search word in the explain half of the corpus. Counted as a test when it is found at
        least 3 times: as predicted when the feature fires (≥ low × max) on the word or the token after it in
        at least half of the matches read (for a negative case: in under a tenth of them)."""
        cfg = self.cfg
        if any(t.kind == "search" and norm(t.probe) == norm(term) for t in h.tests):
            return
        res = record.search(term, cfg.search_hits)
        share = res.share(cfg.low * record.max_act, "either")
        trace("search", {"hypothesis": h.id, "term": term, "matches": res.matches, "read": len(res.hits),
                         "share": share, "hits": [hit.__dict__ for hit in res.hits[:8]]})
        if len(res.hits) < 3:
            return
        expected = "none" if h.negative else "high"
        consistent = share < 0.1 if h.negative else share >= 0.5
        h.tests.append(Test(term, expected, share, share, consistent, kind="search", matches=res.matches,
                            read=len(res.hits)))

    async def _refine(self, llm, hyps, to_refine, exemplars, trace, f) -> None:
        ids = [h.id for h in to_refine]
        schema = {"type": "object", "required": ["rewrites"], "properties": {"rewrites": {
            "type": "array", "minItems": 1, "maxItems": len(ids), "items": {
                "type": "object", "required": ["hypothesis", "text"], "properties": {
                    "hypothesis": {"type": "integer", "enum": ids},
                    "text": {"type": "string", "minLength": 3, "maxLength": HYP_CHARS}}}}}}
        obj = await self._ask(llm, "refine", schema, trace, f, exemplars=exemplars,
                              state=self._state(hyps, "to rewrite", to_refine))
        rewrites = {r["hypothesis"]: r["text"].strip() for r in obj["rewrites"]}
        for h in to_refine:
            if h.id not in rewrites:  # the LLM gave no rewrite: mixed evidence stands, the hypothesis falls
                h.status = REFUTED
                trace("status", {"hypothesis": h.id, "verdict": REFUTED, "why": "no rewrite given"})
                continue
            self._rewrite(h, rewrites[h.id])
            trace("status", {"hypothesis": h.id, "verdict": "REFINED", "text": h.text})

    @staticmethod
    def _rewrite(h: Hypothesis, text: str) -> None:
        h.history.append({"text": h.text, "tests": len(h.tests), "consistent": h.consistent})
        h.text, h.tests, h.status, h.refinements = text, [], ACTIVE, h.refinements + 1

    async def _review(self, llm, hyps, exemplars, trace, f) -> list[str]:
        schema = {"type": "object", "required": ["new_hypotheses"], "properties": {"new_hypotheses": {
            "type": "array", "minItems": 0, "maxItems": 3,
            "items": {"type": "string", "minLength": 3, "maxLength": HYP_CHARS}}}}
        obj = await self._ask(llm, "review", schema, trace, f, exemplars=exemplars, n=2,
                              state=self._state(hyps, "", []))
        known = {norm(h.text) for h in hyps}
        return [t for t in _dedupe(obj["new_hypotheses"]) if norm(t) not in known][:2]

    async def _judge(self, llm, hyps, active, measured, exemplars, trace, f) -> dict[int, str]:
        ids = [h.id for h in active]
        schema = {"type": "object", "required": ["verdicts"], "properties": {"verdicts": {
            "type": "array", "minItems": len(ids), "maxItems": len(ids), "items": {
                "type": "object", "required": ["hypothesis", "status"], "properties": {
                    "hypothesis": {"type": "integer", "enum": ids},
                    "status": {"type": "string", "enum": [CONFIRMED, REFUTED, "REFINED", "UNCHANGED"]},
                    "rewrite": {"type": "string", "maxLength": HYP_CHARS}}}}}}
        obj = await self._ask(llm, "judge", schema, trace, f, exemplars=exemplars,
                              state=self._state(hyps, "to judge", active))
        out = dict(measured)
        by_id = {h.id: h for h in active}
        for v in obj["verdicts"]:
            h, status = by_id[v["hypothesis"]], v["status"]
            if status == "UNCHANGED" and len(h.tests) >= 2:
                trace("status", {"hypothesis": h.id, "llm_verdict_rejected": "UNCHANGED after 2 tests",
                                 "using": measured[h.id]})
                continue
            if status == "REFINED" and v.get("rewrite", "").strip() and h.refinements < self.cfg.max_refinements:
                self._rewrite(h, v["rewrite"].strip())
                out[h.id] = "REWRITTEN"
                continue
            out[h.id] = status
        return out

    async def _conclude(self, llm, hyps, exemplars, trace, f, budget: Budget, faults: list[str],
                        exemplar_texts: list[str], last_resort: str | None = None, support: str | None = None
                        ) -> tuple[str, list[str]]:
        """FINAL_CONCLUSION: asked once, and once more with the reasons when the rules reject the reply (too long
        or cut off, a copied exemplar, the negative case); then the best measured hypothesis that passes them."""
        tested = [h for h in hyps if h.tested]
        positives = [h for h in tested if not h.negative and h.status != REFUTED]
        ranked = sorted(positives or [h for h in tested if not h.negative] or [h for h in hyps if not h.negative],
                        key=lambda h: (h.status == CONFIRMED, h.consistent - h.contradicting), reverse=True)
        negative = next((h.text for h in hyps if h.negative), None)
        schema = {"type": "object", "required": ["description", "labels"], "properties": {
            "description": {"type": "string", "minLength": 3, "maxLength": 200},
            "labels": {"type": "array", "minItems": 1, "maxItems": 4,
                       "items": {"type": "string", "minLength": 2, "maxLength": 80}}}}
        labels: list[str] = []
        description, problems = "", []
        for attempt in (1, 2):
            # each attempt may use what was kept for it, not what the later attempt and the measured selection need
            later = 2 - attempt
            why = budget.exhausted(reserve_calls=budget.reserve[0] - 2 + later,
                                   reserve_tokens=budget.reserve[1] - CONCLUDE_TOKENS + SHORTEN_TOKENS * later)
            if why is not None:
                trace("stop", {"reason": f"no budget for the conclusion: {why}"})
                break
            try:
                if attempt == 1:
                    obj = await self._ask(llm, "conclude", schema, trace, f, exemplars=exemplars,
                                          state=self._state(tested, "", []))
                else:
                    # the redo is a short rewrite of the rejected reply with the reasons (no exemplars: asked the
                    # whole question again, a small LLM repeats its long sentence word for word)
                    obj = await self._ask(llm, "shorten", SHORT_SCHEMA, trace, f, description=description,
                                          problems="; ".join(problems))
            except LLMError as e:
                faults.append(f"conclude: {e}")
                trace("error", {"step": "conclude", "error": str(e)})
                break
            description = clean_text(obj["description"])
            if attempt == 1:
                labels = [x for x in _dedupe([clean_text(x) for x in obj["labels"]])
                          if not _problems(x, exemplar_texts, negative, support)]
            problems = _problems(description, exemplar_texts, negative, support)
            if not problems:
                return description, labels
            trace("conclusion_rejected", {"attempt": attempt, "description": description, "problems": problems})
        # the labels of a rejected conclusion often name the set its sentence was about ("son", "father",
        # "brother"): together they are a candidate; then the best measured hypothesis that passes the rules
        joined = _join(labels)
        passing = [h.text for h in ranked if not _problems(h.text, exemplar_texts, negative, support)]
        options = ([joined] if joined and not _problems(joined, exemplar_texts, negative, support) else []) + passing
        if last_resort and not _problems(last_resort, exemplar_texts, negative, support):
            options.append(last_resort)
        pick = options[0] if options else (labels[0] if labels else ranked[0].text)
        trace("conclusion_fallback", {"description": pick, "why": "no conclusion that passes the rules",
                                      "from": "labels" if joined and pick == joined else
                                      "hypothesis" if passing else
                                      "strongest token" if pick == last_resort else "rules unmet"})
        return pick, labels or _dedupe([h.text for h in positives if h.status == CONFIRMED]) or [pick]

    async def _measured_selection(self, record, llm, oracle, candidates: list[str], exemplars, trace,
                                  budget: Budget, faults: list[str], conclusion: str,
                                  backed: set[str] = frozenset()) -> tuple[str, dict]:
        """The candidate that best predicts the feature, measured by the oracle on sentences the LLM writes from
        each candidate alone (seeded; without the exemplars, as a reader of the explanation would): `fire` — the
        share of them that fire the feature (≥ high × its max); `breadth` — how many different kinds of token the
        sentences fire on clearly (≥ high × max), out of min(4, the kinds of token the explain pool's activating
        windows peak on): naming one member of a set ("son") fires on one kind, naming the set on several. Score = their
        mean; ties go to a candidate `backed` by the corpus counts (an evidence candidate: the breadth of "a white
        shirt" can come from the other colours the LLM happened to write), then to the shorter. One short call per
        candidate;
        a candidate the budget cannot write for is left out (the trace says so)."""
        cfg = self.cfg
        schema = {"type": "object", "required": ["sentences"], "properties": {"sentences": {
            "type": "array", "minItems": 1, "maxItems": cfg.selection_sentences,
            "items": {"type": "string", "minLength": 3, "maxLength": PROBE_CHARS}}}}
        written: dict[str, list[str]] = {}
        skipped: list[str] = []
        for i, cand in enumerate(candidates):
            if (why := budget.exhausted(reserve_calls=0, reserve_tokens=300)) is not None:
                skipped.append(f"{cand}: budget ({why})")
                continue
            try:
                obj = await self._ask(llm, "measure_write", schema, trace, record.feature,
                                      temperature=cfg.design_temperature, seed=cfg.seed + 1000 + i,
                                      exemplars=exemplars, k=cfg.selection_sentences, candidate=cand)
            except LLMError as e:
                faults.append(f"selection: {e}")
                trace("error", {"step": "selection", "error": str(e)})
                return conclusion, {}
            written[cand] = [t.strip() for t in obj["sentences"][: cfg.selection_sentences] if t.strip()]
        if not written:
            trace("selection", {"skipped": "; ".join(skipped) or "no candidate", "chosen": conclusion})
            return conclusion, {}
        texts = [(c, t) for c, ts in written.items() for t in ts]
        results = await oracle.aactivations([t for _, t in texts], [record.feature])
        top = record.max_act if record.max_act > 0 else 1.0
        pool_kinds = {_kind(w.tokens[w.peak]) for w in record.activating("explain")}
        want = max(1, min(4, len(pool_kinds)))
        measured: dict[str, dict] = {c: {"texts": [], "relative": [], "fired_on": set()} for c in written}
        for (c, t), res in zip(texts, results):
            col = res.feature(record.feature)
            m = measured[c]
            m["texts"].append(t)
            m["relative"].append(round((float(col.max()) if col.size else 0.0) / top, 4))
            m["fired_on"] |= {_kind(tok) for tok, a in zip(res.tokens, col) if a >= cfg.high * top}
        scores = {}
        for c, m in measured.items():
            fire = float(np.mean([r >= cfg.high for r in m["relative"]])) if m["relative"] else 0.0
            # every kind of token the sentences fire on clearly, not only the pool's: "colour words" written as
            # "yellow" and "blue" is broad even when the pool's peaks were "white" and "red"
            covered = sorted(m["fired_on"])
            breadth = min(1.0, len(covered) / want)
            scores[c] = {"fire": fire, "breadth": breadth, "score": (fire + breadth) / 2, "texts": m["texts"],
                         "fire_relative": m["relative"], "covered": covered, "words": len(c.split()),
                         "backed": c in backed}
        best = max(scores, key=lambda c: (round(scores[c]["score"], 9), c in backed, -scores[c]["words"]))
        # an evidence candidate's breadth was measured on real text (each listed word fires in most of its
        # occurrences); three written sentences measure breadth to about one kind: within that, it wins
        near = [c for c in scores if c in backed and scores[c]["score"] > 0
                and scores[c]["score"] >= scores[best]["score"] - cfg.selection_tolerance]
        if near and best not in backed:
            best = max(near, key=lambda c: (round(scores[c]["score"], 9), -scores[c]["words"]))
        if scores[best]["score"] == 0:  # nothing written from any candidate fired: no measurement here to go by,
            # so the candidate the corpus counts back (the only one measured at all), else the conclusion
            best = next((c for c in scores if c in backed), conclusion if conclusion in scores else next(iter(scores)))
        trace("selection", {"proxy": "measured: sentences written from each candidate, run through the oracle",
                            "pool_kinds": sorted(pool_kinds), "scores": scores, "chosen": best,
                            **({"left_out": skipped} if skipped else {})})
        return best, {c: v["score"] for c, v in scores.items()}


_PARTS_OF_SPEECH = {"noun", "nouns", "verb", "verbs", "adjective", "adjectives", "adverb", "adverbs", "word", "words",
                    "pronoun", "pronouns", "token", "tokens", "proper noun", "proper nouns"}
_CUE_NAMES = {'"': "a quotation mark", "“": "a quotation mark", "'": "an apostrophe or quote", ".": "a full stop",
              "!": "an exclamation mark", "?": "a question mark", ",": "a comma", ":": "a colon", ";": "a semicolon",
              "(": "an opening bracket", "\\n": "a line break"}


_SENTENCE_END = {".", "!", "?"}


def _cue(token: str) -> str:
    """A cue token as words: 'not' → "'not'", '"' → 'a quotation mark (")'."""
    name = _CUE_NAMES.get(token)
    return f"{name} ({token})" if name else f"'{token}'"


def _kind(token: str) -> str:
    """A token as a kind of word: stripped, lower case (' Son' and 'son' are one kind); whitespace as its repr."""
    return token.strip().lower() or repr(token)


def _join(labels: list[str]) -> str:
    """Short labels (≤ 3 words each, at least two) as one candidate: 'son, father, brother'."""
    short = [x for x in labels if len(x.split()) <= 3]
    if len(short) < 2 or len(short) != len(labels):
        return ""
    return ", ".join(short)


def _marked(t: Test) -> str:
    if not t.tokens:
        return ""
    from saexplain.sampling.record import Window

    w = Window(t.tokens, np.asarray(t.acts, np.float32), "probe", "probe")
    return " ".join(w.marked().split())


def _dedupe(texts: list[str]) -> list[str]:
    """Drop empty and duplicate texts (case, spacing and punctuation ignored), keeping the first."""
    seen, out = set(), []
    for t in texts:
        t = " ".join(t.split())
        key = norm(t)
        if key and key not in seen:
            seen.add(key)
            out.append(t)
    return out


async def _select(record: FeatureRecord, candidates: list[str]) -> tuple[str, dict[str, float | None]]:
    """The candidate whose MiniLM similarity best separates the *explain* pool's activating windows from its
    non-activating ones (AUROC); the score pool is never read here."""
    from saexplain.embeddings import aencode
    from saexplain.metrics import auroc

    pos = [w.text for w in record.activating("explain")[:20]]
    neg = [w.text for w in record.negatives("explain")[:20]]
    if not pos or not neg:
        return candidates[0], {}
    vecs = await aencode(candidates + pos + neg)
    c, texts = vecs[: len(candidates)], vecs[len(candidates):]
    truth = [True] * len(pos) + [False] * len(neg)
    scores = {cand: auroc(texts @ c[i], truth) for i, cand in enumerate(candidates)}
    best = max(candidates, key=lambda k: -1 if scores[k] is None else scores[k])
    return best, scores


_QUOTED = re.compile(r"(?<![\w])['‘\"“](.+?)['’\"”](?![\w])")


def unsupported_quotes(text: str, support: str) -> list[str]:
    """The quoted words of `text` ('ago', "can't") found nowhere in `support` (case-insensitive, as a substring:
    a marked piece of a word counts; markers and runs of whitespace do not split a phrase): a final text may only
    quote what the agent saw."""
    seen = " ".join(support.lower().replace("’", "'").replace("‘", "'").replace("<<", "").replace(">>", "").split())
    return [q for q in (m.strip() for m in _QUOTED.findall(text.replace("’", "'").replace("‘", "'")))
            if q and q.lower() not in seen]


def _problems(text: str, exemplar_texts: list[str], negative: str | None, support: str | None) -> list[str]:
    """The rules every final text passes (rules.conclusion_problems) and, when `support` is given, no quoted
    word the agent never saw (the conclusion prompt's own example, 'only after "can't"', was copied onto
    features whose texts hold no "can't")."""
    problems = conclusion_problems(text, exemplar_texts, negative)
    missing = unsupported_quotes(text, support) if support is not None else []
    if missing:
        problems.append("quotes " + ", ".join(f"'{q}'" for q in missing) + ", which appears in no exemplar, "
                        "corpus line or probe that fired")
    return problems
