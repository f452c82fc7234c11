"""ScriptedLLM: a *fake* LLM backend that returns canned text chosen by test code. It exists only to test
parsing, arithmetic, state machines and fault handling; it proves nothing about explanation quality (the
slow tests and benchmarks use the real default LLM for that)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from saexplain.llm import LLM, Completion, LLMConfig
from saexplain.llm.base import Backend, Request


class ScriptedBackend(Backend):
    name = "scripted"
    model = "scripted"
    supports_json_schema = False  # replies are validated by the client, and a bad one gets the corrective retry
    chat_model = True

    def __init__(self, handler: Callable[[Request], str | tuple[str, dict[str, float]]]):
        self.handler = handler
        self.requests: list[Request] = []

    async def complete(self, request: Request, timeout: float) -> Completion:
        self.requests.append(request)
        out = self.handler(request)
        text, first = (out, None) if isinstance(out, str) else out
        logprobs = tokens = None
        if request.logprobs:
            if first is None:
                first = {text.strip()[:3] or " ": 0.0}
            logprobs = [[first]]
            tokens = [[max(first, key=first.get)]]
        return Completion([text], logprobs, tokens, tokens_in=len(str(request.messages or request.prompt)) // 4,
                          tokens_out=max(1, len(text) // 4), seconds=0.0)


def scripted_llm(handler, store=None, run_id=None, **cfg) -> tuple[LLM, ScriptedBackend]:
    backend = ScriptedBackend(handler)
    cfg.setdefault("retries", 0)
    cfg.setdefault("cache", False)
    return LLM(LLMConfig(**cfg), store=store, run_id=run_id, backend=backend), backend


def yes_no(p_yes: float) -> tuple[str, dict[str, float]]:
    p = min(max(p_yes, 1e-6), 1 - 1e-6)
    return ("yes" if p >= 0.5 else "no"), {"yes": math.log(p), "no": math.log(1 - p)}


def last_user(request: Request) -> str:
    return [c for r, c in request.messages if r == "user"][-1]


def field(text: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", text, re.M)
    return m.group(1) if m else ""


def quoted_word(description: str) -> str | None:
    m = re.search(r'"([^"]+)"', description)
    return m.group(1).lower() if m else None


def keyword_judge(request: Request):
    """A scripted judge that knows one trick: the description quotes a word; snippets (or marked tokens, for
    fuzzing) containing that word match. Sentence-writing prompts get sentences containing the word."""
    user = last_user(request)
    system = request.messages[0][1]
    word = quoted_word(field(user, "Description"))
    if '{"sentences"' in system or '{"matching"' in system:
        n = int(re.search(r"Write (\d+)", user).group(1))
        if "matching sentences and" in user:
            return json.dumps({"matching": [f"The {word or 'sea'} was there, number {i}." for i in range(n)],
                               "unrelated": [f"Numbers went up by {i} percent." for i in range(n)]})
        topic = word or "sea"
        return json.dumps({"sentences": [f"Then the {topic} walked home, day {i}." for i in range(n)]})
    snippet = field(user, "Snippet").lower()
    if "marked" in system:
        marked = " ".join(re.findall(r"<<(.*?)>>", snippet))
        return yes_no(0.9 if word and word in marked else 0.1)
    return yes_no(0.9 if word and re.search(rf"\b{re.escape(word)}\b", snippet) else 0.1)


def universal(req):
    """Every prompt of a run on the ground-truth SAE (feature 0 fires on "wife"): SAGE's steps (test_sage.Script),
    one-shot, simulation, and the keyword judge for the rest."""
    from test_sage import Script

    system = req.messages[0][1]
    if system.startswith("You are an interpretability researcher"):
        return Script()(req)
    if '{"explanation"' in system:
        return json.dumps({"explanation": 'the word "wife"'})
    if '{"activations"' in system:
        toks = [json.loads(ln.split(". ", 1)[1]) for ln in last_user(req).splitlines()
                if ln[:1].isdigit() and ". " in ln]
        return json.dumps({"activations": [10 if t.strip().lower() == "wife" else 0 for t in toks]})
    return keyword_judge(req)


def sage_design_fails(req):
    """`universal`, except that SAGE's probe-design step gets HTTP 500 (None) from the fake server."""
    from test_sage import step_of

    if req.messages[0][1].startswith("You are an interpretability researcher") and step_of(req) == "design":
        return None
    return universal(req)


def always_500(req):
    return None
