"""LLM requests, completions, usage, errors, and the backend interface + registry."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from saexplain.errors import SaexplainError
from saexplain.registry import Registry


class LLMError(SaexplainError):
    """A request failed for good (after retries, or a fault that retrying cannot fix)."""


class RetryableError(LLMError):
    """Timeout, 429, 5xx, malformed or empty reply: worth another attempt (after `retry_after` if given)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LLMParseError(LLMError):
    """A structured reply that stayed invalid after one corrective retry; `raw` keeps the text."""

    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Request:
    """One generation request: chat `messages` ((role, content) pairs) or a completion `prompt`."""

    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    n: int = 1
    json_schema: dict | None = None
    logprobs: int | None = None  # number of top logprobs per generated token
    seed: int | None = None

    def __post_init__(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a request has either messages or a prompt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, backend: str, model: str) -> str:
        blob = json.dumps({"backend": backend, "model": model, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Usage:
    calls: int = 0
    cached: int = 0  # replies served from the request cache (no tokens spent, counted apart)
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # prompt + reply tokens of the cached replies (budgets count them as if asked again)
    seconds: float = 0.0
    queued: float = 0.0  # seconds spent waiting for a concurrency slot (other tasks' requests were in flight)
    cost: float | None = 0.0  # USD; None = unknown (a model without a known price took part)

    def add(self, other: Usage) -> None:
        for f in self.__dataclass_fields__:
            a, b = getattr(self, f), getattr(other, f)
            setattr(self, f, None if a is None or b is None else a + b)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    texts: list[str]
    logprobs: list[list[dict[str, float]]] | None = None  # per text: per generated token, top token → logprob
    tokens: list[list[str]] | None = None  # per text: the generated tokens (with logprobs), aligned with logprobs
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], cached: bool = False) -> Completion:
        return cls(**d, cached=cached)


class Backend(ABC):
    """Turns a Request into a Completion. Raise RetryableError for transient faults, LLMError for faults of the
    endpoint or its reply that retrying cannot fix; anything else (a bug, out of memory) propagates as it is."""

    name: str = "backend"
    model: str = ""
    supports_json_schema: bool = False
    chat_model: bool = True  # instruction-tuned with a chat template (else: completion prompts)
    local: bool = False  # runs in this process: calls cost nothing (remote models without a known price: unknown)
    # requests it serves at once (None: as many as the client sends). The client keeps no more in flight, so a
    # request waits for its turn in the client's queue — not counted in its timeout — rather than inside the
    # backend, where the wait would count and a queue of long requests would time out the last ones.
    slots: int | None = None

    @abstractmethod
    async def complete(self, request: Request, timeout: float) -> Completion: ...

    async def aclose(self) -> None:
        return None


BACKENDS: Registry = Registry("LLM backend")  # name → factory(target: str, cfg: LLMConfig) -> Backend
