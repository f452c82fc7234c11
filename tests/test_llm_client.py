"""The LLM client against a fault-injecting OpenAI-compatible server on 127.0.0.1 (tests named `fault`), the
request cache, accounting and structured replies. The server returns canned text: it tests the client's
parsing and fault handling, never what an LLM would say."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from saexplain.llm import LLM, LLMConfig, LLMError, LLMParseError, parse_json
from saexplain.store import Store
from saexplain.testing.fake_server import FaultServer
from saexplain.testing.scripted import ScriptedBackend

MSG = [("user", "Say ok.")]


def client(server: FaultServer, store=None, **kw) -> LLM:
    cfg = LLMConfig(llm=f"openai-compatible:{server.url}#scripted", backoff=0.05, max_backoff=2.0,
                    **{"timeout": 2.0, **kw})
    return LLM(cfg, store=store, run_id=None)


def run(coro):
    return asyncio.run(coro)


def test_fault_429_with_retry_after_then_500_then_success():
    with FaultServer([("429", 0.4), ("500",), ("ok", "fine")]) as server:
        llm = client(server)
        t0 = time.perf_counter()
        comp = run(llm.generate(MSG))
        elapsed = time.perf_counter() - t0
    assert comp.text == "fine" and len(server.requests) == 3
    assert elapsed >= 0.4, "Retry-After must be honoured"
    assert llm.usage.calls == 1 and llm.usage.tokens_in == 11 and llm.usage.tokens_out == 3


def test_fault_timeout_is_retried_and_nothing_hangs():
    with FaultServer([("timeout", 3.0), ("ok", "after timeout")]) as server:
        llm = client(server, timeout=0.5)
        t0 = time.perf_counter()
        assert run(llm.generate(MSG)).text == "after timeout"
        assert time.perf_counter() - t0 < 2.5
    with FaultServer([("timeout", 5.0)] * 3) as server:
        llm = client(server, timeout=0.4, retries=2)
        t0 = time.perf_counter()
        with pytest.raises(LLMError, match="failed after 3 attempts"):
            run(llm.generate(MSG))
        assert time.perf_counter() - t0 < 3.5, "three 0.4 s attempts plus short backoffs"


def test_fault_malformed_json_and_empty_choices_are_retried():
    with FaultServer([("malformed",), ("empty",), ("ok", "third time")]) as server:
        assert run(client(server).generate(MSG)).text == "third time"
        assert len(server.requests) == 3


def test_fault_persistent_errors_surface_cleanly_and_are_recorded(tmp_path):
    store = Store(tmp_path / "s.db")
    with FaultServer([("500",)] * 10) as server:
        llm = client(server, store=store, retries=3)
        with pytest.raises(LLMError) as e:
            run(llm.generate(MSG, feature=7))
    assert "failed after 4 attempts" in str(e.value) and "HTTP 500" in str(e.value)
    assert "\n" not in str(e.value)
    failed = store.llm_calls(failed_only=True)
    assert len(failed) == 1 and failed[0]["feature"] == 7 and failed[0]["attempts"] == 4
    assert llm.usage.failures == 1
    with FaultServer([("empty",)] * 10) as server, pytest.raises(LLMError, match="empty choice list"):
        run(client(server, retries=1).generate(MSG))


def test_fault_client_errors_are_not_retried():
    with FaultServer([("ok", "x")]) as server:
        bad = LLM(LLMConfig(llm=f"openai-compatible:{server.url.replace('/v1', '/nope')}#m", retries=3,
                            backoff=0.01, timeout=2))
        with pytest.raises(LLMError, match="HTTP 404"):
            run(bad.generate(MSG))
    with pytest.raises(LLMError, match="needs a URL"):
        LLM(LLMConfig(llm="openai-compatible:localhost:8080"))
    with pytest.raises(Exception, match="unknown LLM backend 'gpt'"):
        LLM(LLMConfig(llm="gpt:4"))


def test_cache_makes_a_second_identical_run_free(tmp_path):
    store = Store(tmp_path / "s.db")
    prompts = [[("user", f"question {i}")] for i in range(5)]

    async def batch(llm):
        return [c.text for c in await asyncio.gather(*(llm.generate(p, feature=i) for i, p in enumerate(prompts)))]

    with FaultServer(default_text="answer") as server:
        first = run(batch(client(server, store=store)))
        n = len(server.requests)
        second_llm = client(server, store=store)
        second = run(batch(second_llm))
        assert len(server.requests) == n == 5, "the second identical run makes zero calls"
        assert first == second and second_llm.usage.cached == 5 and second_llm.usage.calls == 0
        run(client(server, store=store, cache=False).generate(prompts[0]))
        assert len(server.requests) == 6, "--no-cache goes to the server"
    logged = {r["feature"] for r in store.llm_calls()[:5]}  # per-feature accounting of the first run
    assert logged == {0, 1, 2, 3, 4}


def test_concurrency_limit_is_honoured():
    with FaultServer(default_text="x", delay=0.2) as server:
        llm = client(server, max_concurrency=2)

        async def many():
            await asyncio.gather(*(llm.generate([("user", str(i))]) for i in range(6)))

        run(many())
        assert server.max_in_flight == 2


def test_one_client_serves_several_event_loops():
    """CLI and tests call asyncio.run per batch; kept-alive connections must not leak across loops."""
    with FaultServer(default_text="again") as server:
        llm = client(server)
        for _ in range(3):
            assert run(llm.generate(MSG)).text == "again"


def test_logprobs_and_completion_mode_are_parsed():
    with FaultServer(default_text="yes") as server:
        llm = client(server)
        comp = run(llm.generate(MSG, logprobs=2))
        assert comp.logprobs == [[{"yes": -0.1, "other": -2.4}]]
        assert server.requests[-1]["top_logprobs"] == 2
        comp = run(llm.generate(prompt="Q: 2+2?\nA:", stop=["\n"], n=2, temperature=0.9))
        assert comp.texts == ["yes", "yes"] and server.requests[-1]["prompt"] == "Q: 2+2?\nA:"


SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
          "required": ["label", "score"]}


def test_structured_reply_is_retried_once_with_the_parse_error_shown():
    with FaultServer([("ok", "label: cats"), ("ok", '{"label": "cats", "score": 3}')]) as server:
        obj, comp = run(client(server).generate_json(MSG, SCHEMA))
    assert obj == {"label": "cats", "score": 3}
    retry_messages = server.requests[1]["messages"]
    assert retry_messages[-2] == {"role": "assistant", "content": "label: cats"}
    assert "no JSON object found" in retry_messages[-1]["content"]
    assert server.requests[0]["response_format"]["json_schema"]["schema"] == SCHEMA


def test_structured_reply_that_stays_invalid_is_a_recorded_failure(tmp_path):
    store = Store(tmp_path / "s.db")
    with FaultServer([("ok", '{"label": "x"}'), ("ok", '{"label": "x", "score": "high"}')]) as server:
        with pytest.raises(LLMParseError) as e:
            run(client(server, store=store).generate_json(MSG, SCHEMA, feature=3))
    assert e.value.raw == '{"label": "x", "score": "high"}'
    assert "score: 'high' is not of type 'integer'" in str(e.value)
    assert any(c["feature"] == 3 and "not valid JSON" in c["error"] for c in store.llm_calls(failed_only=True))


@pytest.mark.parametrize("text,ok", [('{"label": "a", "score": 1}', True), ('```json\n{"label": "a", "score": 1}\n```', True),
                                     ('{"label": "a", "score": 1', False), ('[1, 2]', False), ('', False),
                                     ('{"label": a, "score": 1}', False)])
def test_parse_json(text, ok):
    obj, err = parse_json(text, SCHEMA)
    assert (err is None) == ok and (obj is not None) == ok


def test_a_raw_line_break_inside_a_string_is_kept_as_text():
    obj, err = parse_json('{"label": "The dog ran.\nThe cat sat.", "score": 2}', SCHEMA)
    assert err is None and obj == {"label": "The dog ran.\nThe cat sat.", "score": 2}


def test_templates_render_as_chat_or_completion_from_one_file(tmp_path):
    import saexplain.llm.client as client_module
    from saexplain.errors import SaexplainError
    from saexplain.llm.prompts import Template, template

    t = template(client_module.__file__, "yes_no")
    chat = t.chat(description="cats", snippet="A cat sat.")
    assert chat[0][0] == "system" and [r for r, _ in chat[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[-1][1].endswith("Snippet: A cat sat.\nDoes the snippet match the description?")
    prompt = t.completion(description="cats", snippet="A cat sat.")
    assert prompt.count("Answer:") == 3 and prompt.endswith("Does the snippet match the description?\nAnswer:")
    with pytest.raises(SaexplainError, match="no value for snippet"):
        t.chat(description="cats")
    (tmp_path / "bad.toml").write_text("user = 'x'")
    with pytest.raises(SaexplainError, match="missing 'system'"):
        Template.load(tmp_path / "bad.toml")
    with FaultServer(default_text="yes") as server:
        llm = client(server, mode="completion")
        assert run(llm.ask(t, description="cats", snippet="A cat.")).text == "yes"
        assert server.requests[-1]["prompt"].endswith("Answer:") and server.requests[-1]["stop"] == ["\n"]
        llm = client(server)
        run(llm.ask(t, description="cats", snippet="A cat.", max_tokens=3))
        assert server.requests[-1]["messages"][0]["role"] == "system" and server.requests[-1]["max_tokens"] == 3


def test_ask_command_uses_the_llm_layer_and_its_cache(tmp_path):
    from typer.testing import CliRunner

    from saexplain.cli import app

    runner = CliRunner()
    with FaultServer(default_text="Paris") as server:
        args = ["ask", "Capital of France?", "--llm", f"openai-compatible:{server.url}#scripted",
                "--store", str(tmp_path / "s.db")]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "Paris" in res.output and "11 tokens in" in res.output
        res = runner.invoke(app, args)
        assert "from cache" in res.output and len(server.requests) == 1
        res = runner.invoke(app, [*args[:3], "openai-compatible:nowhere", *args[4:]])
        assert res.exit_code == 2 and "needs a URL" in res.output


def test_transformers_backend_on_the_tiny_base_model(tiny_model_dir):
    """In-process transformers: a base model (no chat template) answers completion prompts; logprobs are
    the model's own log-softmax; chat messages are refused with one clear line."""
    import torch

    llm = LLM(LLMConfig(llm=f"transformers:{tiny_model_dir}", cache=False))
    assert not llm.chat
    comp = run(llm.generate(prompt="Once upon a time", max_tokens=5, logprobs=3))
    assert comp.tokens_out == 5 and len(comp.logprobs[0]) == 5
    first = comp.logprobs[0][0]
    backend = llm.backend
    ids = backend.tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(backend.lm(ids).logits[0, -1], -1)
    assert max(first.values()) == pytest.approx(float(lp.max()), abs=1e-4)
    assert comp.text.strip().startswith(backend.tokenizer.decode([int(lp.argmax())], skip_special_tokens=True).strip())
    two = run(llm.generate(prompt="The king", max_tokens=4, n=2, temperature=1.0, seed=3))
    assert len(two.texts) == 2
    with pytest.raises(LLMError, match="no chat template"):
        run(llm.generate(MSG))


def test_transformers_backend_batches_concurrent_requests_like_solo_ones(tiny_model_dir):
    """Requests in flight together are generated as one left-padded batch, and each gets what it would get
    alone (greedy text, logprobs, its own token counts); a seeded sampled request is never batched, so its
    seed reproduces it; a request with another max_tokens waits for its own batch."""
    llm = LLM(LLMConfig(llm=f"transformers:{tiny_model_dir}", cache=False, max_concurrency=4))
    backend = llm.backend
    prompts = ["Once upon a time", "The king", "A river runs through the old stone town", "Hello"]
    solo = [run(llm.generate(prompt=p, max_tokens=6, logprobs=2)) for p in prompts]
    assert backend.batches == [1, 1, 1, 1]

    async def together():
        return await asyncio.gather(*(llm.generate(prompt=p, max_tokens=6, logprobs=2) for p in prompts))

    backend.batches.clear()
    batched = run(together())
    assert backend.batches == [4]
    for a, b, p in zip(solo, batched, prompts):
        assert b.texts == a.texts
        assert b.tokens_in == len(backend.tokenizer(p)["input_ids"]) == a.tokens_in
        assert b.tokens_out == a.tokens_out == 6
        for sa, sb in zip(a.logprobs[0], b.logprobs[0]):
            assert sa.keys() == sb.keys()
            assert list(sb.values()) == pytest.approx(list(sa.values()), abs=1e-4)

    async def mixed():
        return await asyncio.gather(llm.generate(prompt="The king", max_tokens=6),
                                    llm.generate(prompt="The king", max_tokens=3),
                                    llm.generate(prompt="The king", max_tokens=6, temperature=1.0, seed=5),
                                    llm.generate(prompt="The king", max_tokens=6, temperature=1.0, seed=5))

    backend.batches.clear()
    six, three, s1, s2 = run(mixed())
    assert sorted(backend.batches) == [1, 1, 1]  # the two identical seeded requests share one generation
    assert three.tokens_out == 3 and six.texts == solo[1].texts
    assert s1.texts == s2.texts == run(llm.generate(prompt="The king", max_tokens=6, temperature=1.0, seed=5)).texts


def test_usage_per_feature_from_the_call_log_and_meters_per_task(tmp_path):
    from saexplain.llm import metered

    store = Store(tmp_path / "s.db")
    run_id = store.get_or_create_run("run", "k", "{}")
    with FaultServer(default_text="answer") as server:
        llm = LLM(LLMConfig(llm=f"openai-compatible:{server.url}#scripted", cache=False), store=store, run_id=run_id)

        async def task(feature: int, calls: int):
            with metered() as usage:
                for i in range(calls):
                    await llm.generate([("user", f"f{feature} q{i}")], feature=feature)
            return usage

        async def both():
            return await asyncio.gather(task(1, 2), task(2, 3))

        u1, u2 = run(both())
    assert (u1.calls, u2.calls) == (2, 3)  # concurrent tasks are metered apart
    usage = store.llm_usage(run_id)
    assert usage[1]["calls"] == 2 and usage[2]["calls"] == 3 and usage[2]["failures"] == 0
    assert usage[1]["tokens_in"] == u1.tokens_in and usage[2]["tokens_out"] == u2.tokens_out


def test_an_unusable_reply_is_not_served_from_the_cache_again(tmp_path):
    store = Store(tmp_path / "s.db")
    with FaultServer([("ok", "not json"), ("ok", "still not json")]) as server:
        with pytest.raises(LLMParseError):
            run(client(server, store=store).generate_json(MSG, SCHEMA))
    with FaultServer(default_text='{"label": "cats", "score": 3}') as server:
        obj, comp = run(client(server, store=store).generate_json(MSG, SCHEMA))
        assert obj["label"] == "cats" and not comp.cached and len(server.requests) == 1


def test_backoff_frees_the_slot_so_a_429_storm_does_not_stall_other_requests():
    """One slot; the first request meets 429s (Retry-After 1 s) three times: while it sleeps, the other
    requests go through the slot, so they finish long before it."""
    storms = {"n": 0}

    def handler(req):
        if req.prompt == "request 0" and storms["n"] < 3:
            storms["n"] += 1
            return {"action": ("429", 1.0)}
        return "late" if req.prompt == "request 0" else "quick"

    with FaultServer(handler=handler) as server:
        llm = client(server, max_concurrency=1, retries=5)
        done: dict[str, float] = {}

        async def one(i):
            t0 = time.perf_counter()
            comp = await llm.generate(prompt=f"request {i}")
            done[i] = time.perf_counter() - t0
            return comp.text

        async def storm():
            first = asyncio.create_task(one(0))
            await asyncio.sleep(0.2)  # the first one is sleeping in backoff now
            return await asyncio.gather(first, *(one(i) for i in range(1, 6)))

        texts = run(storm())
    assert texts == ["late"] + ["quick"] * 5
    assert max(done[i] for i in range(1, 6)) < 1.0 < done[0]


def test_identical_requests_in_flight_share_one_call(tmp_path):
    with FaultServer(default_text="shared", delay=0.3) as server:
        llm = client(server, store=Store(tmp_path / "s.db"), max_concurrency=8)

        async def same():
            return await asyncio.gather(*(llm.generate(prompt="the same question") for _ in range(5)),
                                        llm.generate(prompt="another question"))

        comps = run(same())
        assert [c.text for c in comps] == ["shared"] * 6 and len(server.requests) == 2
        assert llm.usage.calls == 2 and llm.usage.cached == 4
        sampled = LLM(LLMConfig(llm=f"openai-compatible:{server.url}#m", cache=False), backend=llm.backend)

        async def unseeded():  # sampled without a seed and without the cache: asked apart
            return await asyncio.gather(*(sampled.generate(prompt="x", temperature=1.0) for _ in range(3)))

        run(unseeded())
        assert len(server.requests) == 5


class OneSlotBackend(ScriptedBackend):
    """A fake in-process backend that serves one request at a time, as llama.cpp in this process does: each
    request holds a lock for `seconds` of work in a worker thread (no LLM)."""

    local, slots = True, 1

    def __init__(self, seconds: float):
        super().__init__(lambda request: "ok")
        self.seconds, self.lock = seconds, threading.Lock()

    async def complete(self, request, timeout):
        def work():
            with self.lock:
                time.sleep(self.seconds)

        await asyncio.to_thread(work)
        return await super().complete(request, timeout)


def test_a_one_slot_backend_is_queued_by_the_client_so_the_wait_is_not_counted_in_the_timeout():
    """Four requests of 0.3 s each against a one-slot backend, a 0.5 s timeout, max_concurrency 4: each one's
    timeout counts its own work only, so all four are answered on the first attempt (with the four in the
    backend at once, the third and fourth would wait 0.6 and 0.9 s on its lock and time out)."""
    backend = OneSlotBackend(0.3)
    llm = LLM(LLMConfig(llm="default", max_concurrency=4, timeout=0.5, retries=0, cache=False), backend=backend)
    assert llm.max_in_flight == 1

    async def four():
        return await asyncio.gather(*(llm.generate([("user", str(i))]) for i in range(4)))

    comps = run(four())
    assert [c.text for c in comps] == ["ok"] * 4 and len(backend.requests) == 4
    assert llm.usage.failures == 0 and llm.usage.queued > 0.9
