"""The live probe and the logit lens of the web UI: one oracle per subject (model + SAE), loaded in the
background on first use and owned by this service (one lock: one forward at a time). When the subject cannot
be loaded — a store copied to a laptop without the model — the pages keep working and the probe says why.
Requests are limited in length and rate per client."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

from pydantic import BaseModel

from saexplain.errors import SaexplainError

MAX_CHARS = 1000
RATE = (20, 10.0)  # at most 20 probes per client in 10 s


class ProbeResult(BaseModel):
    feature: int
    tokens: list[str]
    acts: list[float]
    max_act: float
    seconds: float


class TokenFeatures(BaseModel):
    token: str
    features: list[tuple[int, float]]  # (feature, activation), strongest first


class FeaturesResult(BaseModel):
    tokens: list[TokenFeatures]
    top: list[tuple[int, float, int]]  # (feature, max activation, tokens it fires on) over the whole text
    seconds: float


class LensResult(BaseModel):
    feature: int
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]


class ProbeOff(SaexplainError):
    """The probe cannot run (the subject is loading or cannot be loaded here); the message says which."""


class TooMany(SaexplainError):
    pass


class ProbeService:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._oracles: dict[str, Any] = {}
        self._state: dict[str, str] = {}  # subject key → "loading" | "ready" | the reason it is off
        self._lock = threading.Lock()  # guards the dicts
        self._run_lock = threading.Lock()  # one forward at a time (the oracle's owner)
        self._hits: dict[str, deque] = defaultdict(deque)
        self._lens: dict[tuple[str, int], LensResult] = {}

    def status(self, subject: dict) -> str:
        if not self.enabled:
            return "the live probe is switched off (saexplain serve --no-probe)"
        key = _key(subject)
        with self._lock:
            return self._state.get(key, "not loaded")

    def warm(self, subject: dict) -> None:
        """Start loading the subject in the background (no-op when loaded, loading or off)."""
        if not self.enabled:
            return
        key = _key(subject)
        with self._lock:
            if key in self._state:
                return
            self._state[key] = "loading"
        threading.Thread(target=self._load, args=(key, subject), daemon=True).start()

    def _load(self, key: str, subject: dict) -> None:
        try:
            from saexplain.subject.oracle import Oracle, SubjectConfig

            oracle = Oracle.from_config(SubjectConfig(**{k: v for k, v in subject.items()
                                                         if k in SubjectConfig.model_fields}))
            state = "ready"
        except SaexplainError as e:
            oracle, state = None, f"the subject model cannot be loaded here: {e}"
        except Exception as e:  # noqa: BLE001  any failure to load is shown as the reason the probe is off
            oracle, state = None, f"the subject model cannot be loaded here ({type(e).__name__}: {e})"
        with self._lock:
            if oracle is not None:
                self._oracles[key] = oracle
            self._state[key] = state

    def _oracle(self, subject: dict, wait: float):
        if not self.enabled:
            raise ProbeOff(self.status(subject))
        self.warm(subject)
        key = _key(subject)
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                state = self._state.get(key)
                oracle = self._oracles.get(key)
            if state == "ready":
                return oracle
            if state != "loading":
                raise ProbeOff(state or "not loaded")
            if time.monotonic() > deadline:
                raise ProbeOff("the subject model is still loading; try again in a few seconds")
            time.sleep(0.05)

    def check_rate(self, client: str) -> None:
        n, window = RATE
        now = time.monotonic()
        q = self._hits[client]
        while q and q[0] < now - window:
            q.popleft()
        if len(q) >= n:
            raise TooMany(f"at most {n} probes per {window:.0f} s; wait a moment")
        q.append(now)

    def probe(self, subject: dict, feature: int, text: str, wait: float = 30.0) -> ProbeResult:
        _check_text(text)
        oracle = self._oracle(subject, wait)
        t = time.perf_counter()
        with self._run_lock:
            (res,) = oracle.activations([text], [feature])
        col = res.feature(feature)
        return ProbeResult(feature=feature, tokens=list(res.tokens), acts=[round(float(a), 4) for a in col],
                           max_act=float(col.max()) if col.size else 0.0, seconds=time.perf_counter() - t)

    def features(self, subject: dict, text: str, k: int = 5, wait: float = 30.0) -> FeaturesResult:
        """Which features fire on each token (the SAE's strongest `k` per token) and over the whole text."""
        _check_text(text)
        oracle = self._oracle(subject, wait)
        t = time.perf_counter()
        with self._run_lock:
            (res,) = oracle.activations([text])
        per_token, best, count = [], {}, defaultdict(int)
        for i, tok in enumerate(res.tokens):
            pairs = [(int(f), round(float(a), 4)) for f, a in zip(res.indices[i], res.acts[i]) if a > 0][:k]
            per_token.append(TokenFeatures(token=tok, features=pairs))
            for f, a in zip(res.indices[i], res.acts[i]):
                if a > 0:
                    best[int(f)] = max(best.get(int(f), 0.0), float(a))
                    count[int(f)] += 1
        top = sorted(((f, round(a, 4), count[f]) for f, a in best.items()), key=lambda x: -x[1])[:20]
        return FeaturesResult(tokens=per_token, top=top, seconds=time.perf_counter() - t)

    def lens(self, subject: dict, feature: int, k: int = 10, wait: float = 30.0) -> LensResult:
        key = (_key(subject), feature)
        if key in self._lens:
            return self._lens[key]
        oracle = self._oracle(subject, wait)
        with self._run_lock:
            got = oracle.logit_lens(feature, k)
        out = LensResult(feature=feature, top=[(t, round(v, 4)) for t, v in got.top],
                         bottom=[(t, round(v, 4)) for t, v in got.bottom])
        self._lens[key] = out
        return out


def _check_text(text: str) -> None:
    if not text.strip():
        raise SaexplainError("the text is empty")
    if len(text) > MAX_CHARS:
        raise SaexplainError(f"the text is {len(text)} characters; the probe takes at most {MAX_CHARS}")


def _key(subject: dict) -> str:
    import json

    return json.dumps({k: subject.get(k) for k in ("model", "sae", "hookpoint", "dtype")}, sort_keys=True)
