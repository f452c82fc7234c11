"""Slow: the OpenAI-compatible client against a real llama.cpp server (llama-cpp-python) started here on
127.0.0.1 with the default GGUF, and the in-process backend on the same file."""

from __future__ import annotations

import asyncio

import pytest

from saexplain.llm import LLM, LLMConfig
from saexplain.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCHEMA = {"type": "object", "properties": {"colour": {"type": "string"}, "confidence": {"type": "integer"}},
          "required": ["colour", "confidence"]}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from saexplain.llm.default import qwen_gguf
    from saexplain.llm.server import start_llama_server

    proc, url = start_llama_server(qwen_gguf(), tmp_path_factory.mktemp("server") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_real_server_text_logprobs_json_and_cache(server_url, tmp_path):
    store = Store(tmp_path / "s.db")
    cfg = LLMConfig(llm=f"openai-compatible:{server_url}#qwen", json_mode="json_object", timeout=300)
    llm = LLM(cfg, store=store)
    comp = asyncio.run(llm.generate([("user", "Answer with one word: is the sky blue? yes or no")], max_tokens=3,
                                    logprobs=5))
    assert comp.text.strip() and comp.tokens_in > 5 and comp.tokens_out >= 1
    first = comp.logprobs[0][0]
    assert len(first) >= 2 and all(v <= 0 for v in first.values())
    obj, _ = asyncio.run(llm.generate_json([("user", "Name a colour and your confidence from 1 to 10 as JSON.")],
                                           SCHEMA, max_tokens=40))
    assert isinstance(obj["colour"], str) and isinstance(obj["confidence"], int)
    again = LLM(cfg, store=store)
    comp2 = asyncio.run(again.generate([("user", "Answer with one word: is the sky blue? yes or no")], max_tokens=3,
                                       logprobs=5))
    assert comp2.cached and comp2.texts == comp.texts and again.usage.calls == 0
    assert llm.usage.calls >= 2 and llm.usage.tokens_out >= 2


def test_in_process_default_llm_with_grammar_and_logprobs():
    llm = LLM(LLMConfig(llm="default", n_ctx=1024))
    assert llm.chat
    obj, comp = asyncio.run(llm.generate_json([("user", "Name a colour and a confidence from 1 to 10.")], SCHEMA,
                                              max_tokens=40))
    assert set(obj) >= {"colour", "confidence"}
    comp = asyncio.run(llm.generate([("user", "Is water wet? Answer yes or no.")], max_tokens=1, logprobs=5))
    assert len(comp.logprobs[0][0]) == 5


def test_in_process_request_that_times_out_stops_generating_and_frees_the_model():
    """A long request (up to 400 tokens, 30 s or more here) and a short one sent right after it, a 5 s timeout
    and no retry: the long one fails at its timeout and its thread stops within a token — rather than generating
    on for nobody — so the short one, queued in the client meanwhile (the model has one slot), is answered
    with its own timeout counting its own work only, and the whole exchange ends in seconds."""
    import time

    from saexplain.llm import LLMError

    llm = LLM(LLMConfig(llm="default", n_ctx=1024, timeout=5.0, retries=0, cache=False))

    async def both():
        long = asyncio.create_task(llm.generate([("user", "Count from 1 to 500, one number per line.")],
                                                max_tokens=400))
        await asyncio.sleep(0.1)
        short = asyncio.create_task(llm.generate([("user", "Is water wet? Answer yes or no.")], max_tokens=2))
        return await asyncio.gather(long, short, return_exceptions=True)

    t0 = time.perf_counter()
    long, short = asyncio.run(both())  # asyncio.run also waits for the worker threads to end
    assert isinstance(long, LLMError) and "no reply within 5s" in str(long)
    assert not isinstance(short, Exception) and short.text.strip()
    assert time.perf_counter() - t0 < 20 and not llm.backend.lock.locked()
