"""OpenAI-compatible HTTP backends through the `openai` package: OpenAI itself, vLLM, llama.cpp's server,
Ollama, OpenRouter. Retries are ours (the client's are off), so every fault is classified and counted."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING

from saexplain.llm.base import BACKENDS, Backend, Completion, LLMError, Request, RetryableError

if TYPE_CHECKING:
    import openai


class OpenAICompatible(Backend):
    supports_json_schema = True

    def __init__(self, base_url: str | None, model: str, api_key: str | None, name: str,
                 json_mode: str = "json_schema"):
        self.name = name
        self.model = model
        self.base_url = base_url
        self.json_mode = json_mode  # "json_schema" (OpenAI, vLLM) or "json_object" (llama-cpp-python server)
        self.api_key = api_key or "not-needed"
        self._client: openai.AsyncOpenAI | None = None
        self._loop = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """One async client per event loop: its connection pool belongs to the loop that opened it, and
        synchronous callers (CLI, tests) run each batch in a fresh loop."""
        import openai  # imported when first used: the CLI starts without it

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
            self._client = None

    async def complete(self, request: Request, timeout: float) -> Completion:
        import openai

        t0 = time.perf_counter()
        common = {"model": self.model, "max_tokens": request.max_tokens, "temperature": request.temperature,
                  "n": request.n, "timeout": timeout}
        if request.stop:
            common["stop"] = list(request.stop)
        if request.seed is not None:
            common["seed"] = request.seed
        try:
            if request.messages is not None:
                kwargs = dict(common, messages=[{"role": r, "content": c} for r, c in request.messages])
                if request.logprobs:
                    kwargs.update(logprobs=True, top_logprobs=request.logprobs)
                if request.json_schema is not None:
                    kwargs["response_format"] = self._response_format(request.json_schema)
                resp = await self.client.chat.completions.create(**kwargs)
            else:
                kwargs = dict(common, prompt=request.prompt)
                if request.logprobs:
                    kwargs["logprobs"] = request.logprobs
                resp = await self.client.completions.create(**kwargs)
        except openai.RateLimitError as e:
            raise RetryableError(f"429 rate limited by {self.base_url or 'OpenAI'}", _retry_after(e)) from None
        except openai.APITimeoutError:
            raise RetryableError(f"timed out after {timeout:.0f}s ({self.base_url or 'OpenAI'})") from None
        except openai.APIConnectionError as e:
            raise RetryableError(f"connection failed to {self.base_url or 'OpenAI'}: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise RetryableError(f"HTTP {e.status_code} from {self.base_url or 'OpenAI'}",
                                     _retry_after(e)) from None
            raise LLMError(f"HTTP {e.status_code} from {self.base_url or 'OpenAI'}: {_short(e.message)}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError) as e:  # the reply, not our code
            raise RetryableError(f"malformed reply from {self.base_url or 'OpenAI'}: {_short(str(e))}") from None
        return self._parse(resp, request, time.perf_counter() - t0)

    def _response_format(self, schema: dict) -> dict:
        if self.json_mode == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}

    def _parse(self, resp, request: Request, seconds: float) -> Completion:
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise RetryableError(f"empty choice list from {self.base_url or 'OpenAI'}")
        texts, logprobs = [], [] if request.logprobs else None
        tokens: list[list[str]] | None = [] if request.logprobs else None
        for ch in choices:
            if request.messages is not None:
                msg = getattr(ch, "message", None)
                text = getattr(msg, "content", None)
            else:
                text = getattr(ch, "text", None)
            if text is None:
                raise RetryableError(f"a choice without text from {self.base_url or 'OpenAI'}")
            texts.append(text)
            if logprobs is not None:
                top, toks = _logprobs_of(ch, request.messages is not None)
                logprobs.append(top)
                tokens.append(toks)
        usage = getattr(resp, "usage", None)
        return Completion(texts=texts, logprobs=logprobs, tokens=tokens, seconds=seconds,
                          tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
                          tokens_out=int(getattr(usage, "completion_tokens", 0) or 0))


def _logprobs_of(choice, chat: bool) -> tuple[list[dict[str, float]], list[str]]:
    """(top logprobs per generated token, the generated tokens)."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        raise LLMError("logprobs were asked for but the server returned none (does it support logprobs?)")
    if chat:
        content = lp.content or []
        return ([{t.token: t.logprob for t in (tok.top_logprobs or [])} or {tok.token: tok.logprob}
                 for tok in content], [tok.token for tok in content])
    return [dict(d) for d in (lp.top_logprobs or [])], list(lp.tokens or [])


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"


@BACKENDS.register("openai")
def _openai(target: str, cfg) -> Backend:
    """`openai:<model>`; key from $OPENAI_API_KEY, base URL from $OPENAI_BASE_URL when set."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise LLMError("openai:<model> needs $OPENAI_API_KEY")
    return OpenAICompatible(os.environ.get("OPENAI_BASE_URL"), target, key, "openai")


@BACKENDS.register("openai-compatible")
def _compatible(target: str, cfg) -> Backend:
    """`openai-compatible:http://host:port/v1#model-name`; key from $OPENAI_API_KEY if the server wants one."""
    url, _, model = target.partition("#")
    if not url.startswith(("http://", "https://")):
        raise LLMError(f"openai-compatible needs a URL: openai-compatible:http://host:port/v1#model (got {target!r})")
    return OpenAICompatible(url, model or "default", os.environ.get("OPENAI_API_KEY"), "openai-compatible",
                            json_mode=cfg.json_mode)
