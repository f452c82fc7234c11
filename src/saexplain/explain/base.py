"""The explainer interface and registry. `explain(record, llm, oracle)` may read only the record's *explain*
pool (the score pool is for scorers) and returns an Explanation."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from saexplain.config import Config
from saexplain.explain.rules import clean_text
from saexplain.registry import Registry
from saexplain.sampling.record import FeatureRecord, Window

PROMPTS = Path(__file__).parent / "prompts"


@dataclass
class Explanation:
    description: str
    labels: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "content", "time"} steps
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # "ok", or "degraded" when the explainer finished without a step it needed (an LLM fault it worked
    # around): stored apart, left out of comparisons, retried by the next run. `reason` says what happened.
    status: str = "ok"
    reason: str | None = None


class Tracer:
    """Collects an explainer's steps (prompts, replies, probes, status changes) for the store; `on_step`, when
    given, hears of each step as it happens (progress lines)."""

    def __init__(self, on_step: Callable[[str, Any], None] | None = None):
        self.steps: list[dict[str, Any]] = []
        self.on_step = on_step

    def __call__(self, kind: str, content: Any) -> None:
        self.steps.append({"kind": kind, "content": content, "time": time.time()})
        if self.on_step is not None:
            self.on_step(kind, content)


class Explainer(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[Config]]
    prompts: ClassVar[tuple[str, ...]] = ()  # its template files in explain/prompts/ (part of its fingerprint)

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg if cfg is not None else self.Config()

    def fingerprint(self) -> str:
        """What its explanations depend on besides the record and the LLM: config, prompt files and code (the
        module defining the explainer, this one and the rules every text passes). A stored explanation with
        another fingerprint is made again by the next run — an edit to the agent's code is a new agent."""
        import inspect

        h = hashlib.sha256(f"{self.name}:{self.cfg.to_json()}".encode())
        for name in self.prompts:
            h.update((PROMPTS / f"{name}.toml").read_bytes())
        for path in dict.fromkeys([inspect.getfile(type(self)), __file__, str(Path(__file__).with_name("rules.py"))]):
            h.update(Path(path).read_bytes())
        return h.hexdigest()[:16]

    @abstractmethod
    async def run(self, record: FeatureRecord, llm, oracle, trace: Tracer) -> Explanation: ...

    async def explain(self, record: FeatureRecord, llm, oracle,
                      progress: Callable[[str], None] | None = None) -> Explanation:
        """`progress`, when given, gets a line per LLM step of the explainer (with its budget) as it starts."""
        from saexplain.llm import metered

        trace = Tracer(_progress(self, progress, time.perf_counter()) if progress else None)
        t0 = time.perf_counter()
        with metered() as usage:
            exp = await self.run(record, llm, oracle, trace)
        exp.description = clean_text(exp.description)  # an explanation is clean text, whatever the reply's shape
        exp.labels = [t for t in (clean_text(x) for x in exp.labels) if t]
        exp.usage = usage.to_dict()
        exp.trace = trace.steps
        exp.seconds = time.perf_counter() - t0
        return exp


def _progress(explainer: Explainer, echo: Callable[[str], None], t0: float) -> Callable[[str, Any], None]:
    calls = 0
    budget = getattr(explainer.cfg, "max_llm_calls", None)

    def on_step(kind: str, content: Any) -> None:
        nonlocal calls
        if kind == "prompt":
            calls += 1
            step = (content.get("step") if isinstance(content, dict) else None) or "writing the explanation"
            of = f" of at most {budget}" if budget else ""
            echo(f"{explainer.name}: {step} (LLM call {calls}{of}, {time.perf_counter() - t0:.0f}s in)")
        elif kind == "stop" and isinstance(content, dict):
            echo(f"{explainer.name}: stopped testing ({content.get('reason')}), concluding")

    return on_step


EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")


def format_window(tokens: list[str], acts, max_act: float, mark: tuple[str, str] = ("<<", ">>")) -> str:
    """One example line: the text with firing tokens marked, then each firing token with its level 0–10."""
    w = Window(list(tokens), np.asarray(acts, np.float32), "explain", "top")
    text = " ".join(w.marked(None, *mark).split())
    levels = [f"{t.strip() or repr(t)} {round(10 * a / max_act) if max_act else 0}"
              for t, a in zip(tokens, acts) if a > 0]
    return f"{text}\n   activations: {', '.join(levels) if levels else 'none'}"


def firing_tokens(windows, top: int = 6) -> str:
    """Two summary lines, counted (not read by an LLM): the tokens the feature fires on most across the exemplars
    (at their peaks), and the tokens just before those peaks — a feature that fires on whatever word follows
    "not" shows a varied first line and a uniform second one."""
    counts: Counter[str] = Counter()
    before: Counter[str] = Counter()
    for w in windows:
        peak = w.peak
        counts[w.tokens[peak].strip() or repr(w.tokens[peak])] += 1
        if peak > 0:
            before[w.tokens[peak - 1].strip() or repr(w.tokens[peak - 1])] += 1
    line = "Strongest token per example: " + ", ".join(f"'{t}' ×{n}" for t, n in counts.most_common(top))
    if before:
        line += "\nToken just before it: " + ", ".join(f"'{t}' ×{n}" for t, n in before.most_common(top))
    return line
