"""The one LLM client every explainer and scorer uses: a backend from a config string, plus a concurrency
limit, per-request timeouts, retries with exponential backoff and jitter (honouring Retry-After), a request
cache and a call log in the SQLite store, and usage accounting per run and per feature."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

from pydantic import Field

from saexplain.config import Config
from saexplain.llm.base import BACKENDS, Completion, LLMError, LLMParseError, Request, RetryableError, Usage
from saexplain.store import Store

# USD per 1M tokens (in, out); a missing entry means the cost is not computed.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
}


class LLMConfig(Config):
    cli_name: ClassVar[str] = "llm"
    # what results depend on is which LLM, prompted how (llm, mode, json_mode); the rest is speed and plumbing
    speed_fields: ClassVar[frozenset[str]] = frozenset({"max_concurrency", "timeout", "retries", "backoff",
                                                        "max_backoff", "cache", "n_ctx", "threads", "logprobs",
                                                        "llm_device"})
    llm: str = Field("default", description="default | smoke | openai:<model> | openai-compatible:<url>#<model> | "
                                            "llamacpp:<file.gguf> | transformers:<id or folder>")
    max_concurrency: int = Field(4, ge=1, description="requests in flight at once")
    timeout: float = Field(120.0, gt=0, description="seconds per request attempt")
    retries: int = Field(4, ge=0, description="extra attempts after a timeout, 429, 5xx or malformed reply")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds (doubles, with jitter)")
    max_backoff: float = Field(30.0, ge=0, description="longest retry delay")
    cache: bool = Field(True, description="reuse identical requests' answers from the store")
    n_ctx: int = Field(4096, description="context length (in-process llama.cpp)")
    threads: int | None = Field(None, description="CPU threads (in-process llama.cpp; default: all cores)")
    logprobs: bool = Field(True, description="load in-process llama.cpp with logits_all (needed for logprobs)")
    json_mode: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="how an OpenAI-compatible server is asked for JSON (llama-cpp-python: json_object)")
    llm_device: str = Field("cpu", description="torch device of the in-process transformers LLM backend")
    mode: Literal["auto", "chat", "completion"] = Field(
        "auto", description="prompt style: chat messages or few-shot completion (auto: from the backend)")


def make_backend(cfg: LLMConfig):
    kind, _, target = cfg.llm.partition(":")
    return BACKENDS.get(kind)(target, cfg)


_METERS: ContextVar[tuple[Usage, ...]] = ContextVar("saexplain_llm_meters", default=())


@contextmanager
def metered() -> Iterator[Usage]:
    """Usage of every LLM call made inside this block by this task (asyncio tasks each carry their own
    context, so concurrent explainers and scorers are metered apart). Meters nest."""
    usage = Usage()
    token = _METERS.set(_METERS.get() + (usage,))
    try:
        yield usage
    finally:
        # a coroutine closed by the garbage collector (a killed or cancelled run) exits this block in whatever
        # context is current then — another task's: its meters are not ours to change (setting them back would
        # silently stop that task's metering, and with it SAGE's budgets)
        try:
            _METERS.reset(token)
        except (ValueError, RuntimeError):
            pass


class LLM:
    def __init__(self, cfg: LLMConfig, store: Store | None = None, run_id: int | None = None, backend=None):
        self.cfg = cfg
        self.backend = backend if backend is not None else make_backend(cfg)
        self.store = store
        self.run_id = run_id
        self.usage = Usage()
        self.usage_by_feature: dict[int | None, Usage] = defaultdict(Usage)
        self._semaphore: asyncio.Semaphore | None = None
        self._loop = None
        self._inflight: dict[str, asyncio.Future] = {}  # request key → the reply of the identical request in flight

    @property
    def max_in_flight(self) -> int:
        """Requests in flight at once: `max_concurrency`, at most the backend's slots."""
        slots = getattr(self.backend, "slots", None)
        return min(self.cfg.max_concurrency, slots) if slots else self.cfg.max_concurrency

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore, self._loop = asyncio.Semaphore(self.max_in_flight), loop
        return self._semaphore

    # ------------------------------------------------------------------------------------------- generate
    async def generate(self, messages: Sequence[tuple[str, str]] | None = None, prompt: str | None = None, *,
                       max_tokens: int = 256, temperature: float = 0.0, stop: Sequence[str] = (), n: int = 1,
                       json_schema: dict | None = None, logprobs: int | None = None, seed: int | None = None,
                       feature: int | None = None) -> Completion:
        request = Request(messages=tuple((r, c) for r, c in messages) if messages is not None else None,
                          prompt=prompt, max_tokens=max_tokens, temperature=temperature, stop=tuple(stop), n=n,
                          json_schema=json_schema, logprobs=logprobs, seed=seed)
        return await self.complete(request, feature=feature)

    async def complete(self, request: Request, feature: int | None = None) -> Completion:
        """One request: from the request cache, joined to an identical request already in flight, or sent (with
        retries). The concurrency slot is held per attempt, never while sleeping in backoff, so a 429 storm on
        some requests does not stall the others."""
        key = request.key(self.backend.name, self.backend.model)
        if self.cfg.cache and self.store is not None:
            hit = self.store.llm_cache_get(key)
            if hit is not None:
                comp = Completion.from_dict(hit, cached=True)
                comp.extra["request_key"] = key
                self._account(Usage(cached=1, tokens_cached=comp.tokens_in + comp.tokens_out), feature)
                return comp
        # identical requests in flight share one call, where asking twice would give the same answer anyway (the
        # request cache's rule: greedy, seeded, or cached)
        coalesce = self.cfg.cache or request.temperature == 0 or request.seed is not None
        pending = self._inflight.get(key) if coalesce else None
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            comp = Completion.from_dict((await asyncio.shield(pending)).to_dict(), cached=True)
            comp.extra["request_key"] = key
            self._account(Usage(cached=1, tokens_cached=comp.tokens_in + comp.tokens_out), feature)
            return comp
        fut: asyncio.Future | None = None
        if coalesce:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
        try:
            comp = await self._send(request, key, feature)
        except BaseException as e:
            # joined callers get the failure; a run torn down (cancelled, or closed after its loop) cancels them
            if fut is not None and not fut.get_loop().is_closed():
                if isinstance(e, Exception):
                    fut.set_exception(e)
                    fut.exception()  # retrieved: a failure nobody joined is not reported as unhandled
                else:
                    fut.cancel()
            raise
        finally:
            if fut is not None and self._inflight.get(key) is fut:
                del self._inflight[key]
        if fut is not None:
            fut.set_result(comp)
        return comp

    async def _send(self, request: Request, key: str, feature: int | None) -> Completion:
        last: Exception | None = None
        attempts = 0
        for attempt in range(self.cfg.retries + 1):
            attempts += 1
            try:
                waiting = time.perf_counter()
                async with self._sem():  # the slot is held for the attempt only
                    self._account(Usage(queued=time.perf_counter() - waiting), feature)
                    comp = await asyncio.wait_for(self.backend.complete(request, self.cfg.timeout),
                                                  self.cfg.timeout + 1.0)
                break
            except TimeoutError:
                last = RetryableError(f"no reply within {self.cfg.timeout:.0f}s")
            except RetryableError as e:
                last = e
            except LLMError as e:
                self._fail(request, key, e, feature, attempts)
                raise
            if attempt < self.cfg.retries:
                await asyncio.sleep(self._delay(attempt, getattr(last, "retry_after", None)))
        else:
            err = LLMError(f"{self.backend.name}:{self.backend.model} failed after {attempts} attempts: {last}")
            self._fail(request, key, err, feature, attempts)
            raise err
        cost = 0.0 if getattr(self.backend, "local", False) else _cost(self.backend.model, comp.tokens_in,
                                                                        comp.tokens_out)
        self._account(Usage(calls=1, tokens_in=comp.tokens_in, tokens_out=comp.tokens_out, seconds=comp.seconds,
                            cost=cost), feature)
        if self.store is not None:
            self.store.log_llm_call(self.run_id, feature, self.backend.name, self.backend.model, key,
                                    request.to_dict(), comp.to_dict(), None, comp.tokens_in, comp.tokens_out,
                                    comp.seconds, attempts)
            if self.cfg.cache:
                self.store.llm_cache_put(key, self.backend.name, self.backend.model, comp.to_dict())
        comp.extra["request_key"] = key
        return comp

    def _forget(self, comp: Completion) -> None:
        """Drop a reply that turned out unusable from the request cache, so that a later run asks again."""
        if self.store is not None and comp.extra.get("request_key"):
            self.store.llm_cache_delete(comp.extra["request_key"])

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server's word, up to our longest delay
            return min(retry_after, self.cfg.max_backoff)
        base = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** attempt)
        return base * (0.5 + random.random() / 2)  # jitter: 50–100 % of the exponential step

    def _fail(self, request: Request, key: str, err: Exception, feature: int | None, attempts: int) -> None:
        self._account(Usage(failures=1), feature)
        if self.store is not None:
            self.store.log_llm_call(self.run_id, feature, self.backend.name, self.backend.model, key,
                                    request.to_dict(), None, str(err), 0, 0, 0.0, attempts)

    def _account(self, usage: Usage, feature: int | None) -> None:
        self.usage.add(usage)
        self.usage_by_feature[feature].add(usage)
        for meter in _METERS.get():
            meter.add(usage)

    @property
    def chat(self) -> bool:
        """Whether templates render as chat messages (else as a few-shot completion prompt)."""
        return self.cfg.mode == "chat" or (self.cfg.mode == "auto" and self.backend.chat_model)

    async def ask(self, template, *, feature: int | None = None, **kw) -> Completion:
        """Render a prompt Template for this backend (chat or completion) and generate; `kw` fills the
        template's fields, generation options (max_tokens, temperature, …) pass through."""
        gen = {k: kw.pop(k) for k in ("max_tokens", "temperature", "stop", "n", "logprobs", "seed") if k in kw}
        if self.chat:
            return await self.generate(template.chat(**kw), feature=feature, **gen)
        gen.setdefault("stop", ["\n"])
        return await self.generate(prompt=template.completion(**kw), feature=feature, **gen)

    # ----------------------------------------------------------------------------------- structured replies
    async def generate_json(self, messages: Sequence[tuple[str, str]], schema: dict, *, max_tokens: int = 512,
                            temperature: float = 0.0, feature: int | None = None, seed: int | None = None,
                            logprobs: int | None = None) -> tuple[Any, Completion]:
        """A reply that parses as JSON and validates against `schema`. The schema becomes a grammar where the
        backend supports it; otherwise (or if it still fails) the parse error is shown once and the request
        retried; a reply still invalid raises LLMParseError with the raw text (recorded in the store)."""
        messages = list(messages)
        use_schema = schema if self.backend.supports_json_schema else None
        comp = await self.generate(messages, max_tokens=max_tokens, temperature=temperature,
                                   json_schema=use_schema, feature=feature, seed=seed, logprobs=logprobs)
        obj, error = parse_json(comp.text, schema)
        if error is None:
            return obj, comp
        self._forget(comp)
        retry = messages + [("assistant", comp.text),
                            ("user", f"That reply is not valid: {error}. Reply again with only a JSON object that "
                                     f"matches this schema: {json.dumps(schema)}")]
        comp2 = await self.generate(retry, max_tokens=max_tokens, temperature=temperature, json_schema=use_schema,
                                    feature=feature, seed=seed, logprobs=logprobs)
        obj, error2 = parse_json(comp2.text, schema)
        if error2 is None:
            return obj, comp2
        self._forget(comp2)
        err = LLMParseError(f"reply is not valid JSON for the schema after a corrective retry: {error2}", comp2.text)
        self._fail(Request(messages=tuple(retry)), "", err, feature, 2)
        raise err

    async def aclose(self) -> None:
        await self.backend.aclose()


def parse_json(text: str, schema: dict) -> tuple[Any, str | None]:
    """(object, None) or (None, one-line error). Tolerates a ```json fence around the object, and raw control
    characters (a line break, a tab) inside a string: llama.cpp's JSON grammar lets the model write them, the
    meaning is plain, and a strict parse turned such a reply into a failed step (seen in SAGE's selection)."""
    import jsonschema
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`")
        t = t.removeprefix("json")
    start, end = t.find("{"), t.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object found"
    try:
        obj = json.loads(t[start:end + 1], strict=False)
    except json.JSONDecodeError as e:
        return None, f"JSON syntax error: {e.msg} at character {e.pos}"
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        return None, f"{where}: {e.message}"
    return obj, None


def _cost(model: str, tokens_in: int, tokens_out: int) -> float | None:
    """USD for a call, None when the model's price is unknown (never a silent $0)."""
    price = PRICES.get(model)
    return None if price is None else (tokens_in * price[0] + tokens_out * price[1]) / 1e6
