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


def test_in_process_grammar_last_sampling_gives_the_library_texts_and_skips_the_vocabulary_pass():
    """JSON-schema requests take the grammar-last sampler: the same texts as llama-cpp-python's own chain
    (grammar over the whole vocabulary at every token) — greedy, with repetition penalties too, when the grammar
    refuses the model's favourite token (an enum it would not write), and sampled with seeds at two
    temperatures — while the library's chain runs for a few tokens only. Other chains keep the library's sampler."""
    import llama_cpp._internals as internals

    from saexplain.llm.inprocess import _GrammarLast

    llm = LLM(LLMConfig(llm="default", n_ctx=1024, cache=False))
    model = llm.backend.llm
    library_init = type(model)._init_sampler.__get__(model)
    chain_runs = []
    library_sample = internals.LlamaSampler.sample

    def counted(self, ctx, idx=-1):
        chain_runs.append(1)
        return library_sample(self, ctx, idx)

    enum = {"type": "object", "properties": {"animal": {"enum": ["zebra", "okapi"]}}, "required": ["animal"]}
    texts = {"type": "object", "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
             "required": ["texts"]}
    river = ("Write two short texts (15 to 30 words each) in which the word 'river' appears. "
             'Reply with JSON {"texts": [...]}')
    cases = [({"messages": [{"role": "user", "content": "Name a colour and a confidence from 1 to 10."}],
               "response_format": {"type": "json_object", "schema": SCHEMA}}, 1.0, 0.0, None),
             ({"messages": [{"role": "user", "content": "Give a colour you like and how sure you are, 1 to 10, as JSON."}],
               "response_format": {"type": "json_object", "schema": SCHEMA}}, 1.3, 0.0, None),
             ({"messages": [{"role": "user", "content": "Which animal barks? Say dog."}],
               "response_format": {"type": "json_object", "schema": enum}}, 1.0, 0.0, None),
             # sampled: the chain's own top-k … dist on the 40 best allowed tokens, its random state included
             ({"messages": [{"role": "user", "content": river}],
               "response_format": {"type": "json_object", "schema": texts}}, 1.0, 0.7, 1),
             ({"messages": [{"role": "user", "content": river}],
               "response_format": {"type": "json_object", "schema": texts}}, 1.0, 1.0, 3)]
    internals.LlamaSampler.sample = counted
    try:
        for kwargs, penalty, temp, seed in cases:
            def ask(kwargs=kwargs, penalty=penalty, temp=temp, seed=seed):
                model.reset()
                out = model.create_chat_completion(max_tokens=40, temperature=temp, repeat_penalty=penalty,
                                                   seed=seed, **kwargs)
                return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"]

            chain_runs.clear()
            fast, n_fast = ask()
            fast_chain_runs = len(chain_runs)
            wrapped, model._init_sampler = model._init_sampler, library_init
            try:
                chain_runs.clear()
                plain, n_plain = ask()
                assert len(chain_runs) >= n_plain  # the library's chain chose every token (and the end)
            finally:
                model._init_sampler = wrapped
            assert fast == plain and n_fast == n_plain, (kwargs, penalty, temp, fast, plain)
            if "enum" in str(kwargs):  # the grammar refused the model's "dog": the chain chose then
                assert fast_chain_runs >= 1 and ('"zebra"' in fast or '"okapi"' in fast), fast
            else:  # a prompt that asks for what the schema holds: the model's favourite token is mostly allowed
                assert fast_chain_runs < n_fast / 2, (fast, fast_chain_runs, n_fast)
    finally:
        internals.LlamaSampler.sample = library_sample
    from llama_cpp import LlamaGrammar

    grammar = LlamaGrammar.from_json_schema(__import__("json").dumps(SCHEMA), verbose=False)
    assert isinstance(model._init_sampler(grammar=grammar, temp=0.0), _GrammarLast)
    assert isinstance(model._init_sampler(grammar=grammar, temp=0.8, top_k=40), _GrammarLast)
    assert not isinstance(model._init_sampler(grammar=None, temp=0.0), _GrammarLast)
    # chains whose draw needs the whole vocabulary stay the library's: no top-k, mirostat, dist alone
    assert not isinstance(model._init_sampler(grammar=grammar, temp=0.8, top_k=0), _GrammarLast)
    assert not isinstance(model._init_sampler(grammar=grammar, temp=0.8, top_k=40, mirostat_mode=2), _GrammarLast)
    assert not isinstance(model._init_sampler(grammar=grammar, temp=-1.0), _GrammarLast)
