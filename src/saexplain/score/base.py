"""The scorer interface, its registry, and the arithmetic every scorer shares.

A scorer answers: what does this explanation predict about the real feature? `score(record, explanation,
llm, oracle)` reads only the record's *score* pool (never windows the explainer saw) and returns a value
(higher is better), details (per-example data, enough to recompute the value), and the LLM usage."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from saexplain.config import Config
from saexplain.metrics import auroc, balanced_accuracy, pearson  # noqa: F401  (re-exported)
from saexplain.registry import Registry
from saexplain.sampling.record import FeatureRecord
from saexplain.status import Status


@dataclass
class ScoreResult:
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    # "ok"; "degraded" when the value is not what the config asked for (e.g. AUROC asked, logprobs missing for
    # some windows) or there is no value: stored apart, left out of comparisons, retried by the next run
    status: Status = Status.OK
    reason: str | None = None

    def __post_init__(self):
        if self.value is None and self.status == Status.OK:
            self.status, self.reason = Status.DEGRADED, str(self.details.get("error") or "no value")


class Scorer(ABC):
    """Subclasses set `name` and `Config` (a Config subclass with a `cli_prefix`) and implement `run`."""

    name: ClassVar[str]
    Config: ClassVar[type[Config]]
    needs_llm: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg if cfg is not None else self.Config()

    @abstractmethod
    async def run(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult: ...

    async def score(self, record: FeatureRecord, explanation: str, llm, oracle) -> ScoreResult:
        from saexplain.llm import metered

        with metered() as usage:
            result = await self.run(record, explanation, llm, oracle)
        result.usage = usage.to_dict()
        return result


SCORERS: Registry[type[Scorer]] = Registry("scorer")


# ---------------------------------------------------------------------------------------------- arithmetic
def p_yes(completion) -> float:
    """P("yes") / (P("yes") + P("no")) at the first answer token (see `p_yes_with_source`)."""
    return p_yes_with_source(completion)[0]


def p_yes_with_source(completion) -> tuple[float, str]:
    """(P("yes") / (P("yes") + P("no")) at the first answer token, where it came from): "logprobs" when the
    backend gave logprobs holding yes or no (case, spaces and punctuation variants summed); else "text", 1.0 or
    0.0 read from the answer. Anything else is an LLMParseError."""
    if completion.logprobs and completion.logprobs[0]:
        yes = no = 0.0
        for tok, lp in completion.logprobs[0][0].items():
            word = tok.strip().strip(".,!:").lower()
            if word == "yes":
                yes += math.exp(lp)
            elif word == "no":
                no += math.exp(lp)
        if yes + no > 0:
            return yes / (yes + no), "logprobs"
    answer = completion.text.strip().lower()
    if answer.startswith("yes"):
        return 1.0, "text"
    if answer.startswith("no"):
        return 0.0, "text"
    from saexplain.llm import LLMParseError

    raise LLMParseError(f"expected yes or no, got {completion.text[:60]!r}", completion.text)


def snippet(text: str, limit: int = 400) -> str:
    """Corpus text as it goes into a prompt: one line, quoted as data."""
    t = " ".join(text.split())
    return t if len(t) <= limit else t[:limit] + "…"
