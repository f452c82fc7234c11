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
