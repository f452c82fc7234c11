"""`saexplain run --ray`: features explained and scored by Ray workers, stored by the driver alone.

The driver does what it does for a local run — cache (on the workers when it must be built), sampling, the run's
row and writer lease, planning each feature's due items from the store, persisting each result, the report — and
`RayExecutor` replaces the in-process execution: a feature's items go to one worker (the least busy when the
feature starts; another one if that worker dies), which holds its own oracle on its device and its own LLM client
(the run's endpoint, or its node's from --ray-nodes). Workers never touch the store: their LLM client writes its
call log and request-cache entries into a journal that comes back with every result and is written by the
driver. A worker does not read the store's request cache, so an item cut off by a worker's (or the driver's)
death is asked again from the start — with greedy or seeded requests that is the same reply."""

from __future__ import annotations

import os
import socket
from typing import Any

from saexplain.distributed.cluster import Workers, node_overrides, safe_exception, worker_chdir, worker_count
from saexplain.distributed.config import RayConfig
from saexplain.errors import ConfigError, SaexplainError


class Journal:
    """The store methods the LLM client calls, recorded instead of written (a worker has no store); the
    request cache answers from what this worker put in it."""

    def __init__(self):
        self.ops: list[tuple[str, tuple]] = []
        self._cache: dict[str, dict] = {}

    def llm_cache_get(self, key: str):
        return self._cache.get(key)

    def llm_cache_put(self, key: str, backend: str, model: str, response: dict) -> None:
        self._cache[key] = response
        self.ops.append(("llm_cache_put", (key, backend, model, response)))

    def llm_cache_delete(self, key: str) -> None:
        self._cache.pop(key, None)
        self.ops.append(("llm_cache_delete", (key,)))

    def log_llm_call(self, *args) -> None:
        self.ops.append(("log_llm_call", args))

    def drain(self) -> list[tuple[str, tuple]]:
        ops, self.ops = self.ops, []
        return ops


def replay(store, ops: list[tuple[str, tuple]]) -> None:
    """A worker's journal written into the store (by the driver, the store's one writer)."""
    for name, args in ops:
        getattr(store, name)(*args)


def llm_for_node(llm: dict, overrides: dict[str, dict], node: str, host: str) -> dict:
    """The run's LLM settings with this node's entry of --ray-nodes applied ("*": every node not listed). An
    endpoint may differ per node; the model may not (the run's identity names one model)."""
    extra = overrides.get(node) or overrides.get(host) or overrides.get("*") or {}
    out = {**llm, **extra}
    if out["llm"] != llm["llm"]:
        def model(spec: str) -> tuple[str, str]:
            kind, _, target = spec.partition(":")
            return kind, target.rpartition("#")[2] if "#" in target else target
        if model(out["llm"]) != model(llm["llm"]) or not out["llm"].startswith(("openai-compatible:", "openai:")):
            raise ConfigError(f"--ray-nodes: node {node} asks for {out['llm']!r}, another model than the run's "
                              f"{llm['llm']!r}; per node only the endpoint of the same model may differ")
    return out


class RunWorker:
    """A Ray actor: the run's oracle on this worker's device, an LLM client, and the run's explainers and scorers
    (made from the configs; their fingerprints must equal the driver's — a worker running other code or other
    prompt files is refused)."""

    def __init__(self, configs: dict, run_id: int, overrides: dict, cwd: str):
        import ray

        from saexplain.llm import LLM, LLMConfig
        from saexplain.pipeline.configs import StageConfigs
        from saexplain.pipeline.runner import Components
        from saexplain.subject.oracle import Oracle

        worker_chdir(cwd)
        self.cfgs = StageConfigs.from_dict(configs)
        self.node = ray.util.get_node_ip_address()
        llm = llm_for_node(configs["llm"], overrides, self.node, socket.gethostname())
        self.journal = Journal()
        self.llm = LLM(LLMConfig(**llm), store=self.journal, run_id=run_id)
        self.oracle = Oracle.from_config(self.cfgs.subject)
        self.components = Components(self.cfgs)

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "node": self.node, "pid": os.getpid(), "d_sae": self.oracle.d_sae,
                "local_llm": bool(getattr(self.llm.backend, "local", False)), "llm": self.llm.cfg.llm,
                "llm_in_flight": self.llm.max_in_flight}

    def _explainer(self, name: str, fingerprint: str):
        explainer, fp = self.components.explainer(name)
        if fp != fingerprint:
            raise SaexplainError(f"Ray worker on {self.node}: explainer {name} has fingerprint {fp}, the driver's "
                                 f"is {fingerprint} (another saexplain version or other prompt files there)")
        return explainer

    def _scorer(self, name: str, cfg_hash: str):
        scorer, h = self.components.scorer(name)
        if h != cfg_hash:
            raise SaexplainError(f"Ray worker on {self.node}: scorer {name}'s config hash {h} differs from the "
                                 f"driver's {cfg_hash}")
        return scorer

    async def explain(self, method: str, fingerprint: str, record) -> tuple[Any, list]:
        from saexplain.pipeline.runner import ExplainItem, execute_explanation

        item = ExplainItem(record.feature, method, self._explainer(method, fingerprint), fingerprint)
        result = await execute_explanation(item, record, self.llm, self.oracle)
        return (safe_exception(result) if isinstance(result, BaseException) else result), self.journal.drain()

    async def score(self, explanation: dict, scorer_name: str, cfg_hash: str, record) -> tuple[Any, float, list]:
        from saexplain.pipeline.runner import ScoreItem, execute_score

        item = ScoreItem(explanation, scorer_name, self._scorer(scorer_name, cfg_hash), cfg_hash)
        result, seconds = await execute_score(item, record, self.llm, self.oracle)
        if isinstance(result, BaseException):
            result = safe_exception(result)
        return result, seconds, self.journal.drain()

    async def close(self) -> None:
        await self.llm.aclose()


class RayExecutor:
    """The runner's executor (as `LocalExecutor`) on Ray workers; results come back to the driver, which writes
    each worker's journal into the store before the runner persists the result."""

    def __init__(self, ray, cfg: RayConfig, configs: dict, run_id: int, store, echo=print):
        self.ray, self.store = ray, store
        n = worker_count(cfg, ray)
        opts = {"num_cpus": cfg.ray_cpus_per_worker, "num_gpus": cfg.ray_gpus_per_worker}
        self.workers = Workers(ray, RunWorker, n, opts, configs, run_id, node_overrides(cfg), os.getcwd(),
                               name="run worker")
        info = self.workers.ready()
        self.local_llm = info[0]["local_llm"]
        self.llm_in_flight = max(i["llm_in_flight"] for i in info)  # per worker (the client's and backend's cap)
        hosts = sorted({i["host"] for i in info})
        echo(f"ray: {n} run worker(s) on {len(hosts)} node(s) ({', '.join(hosts)}), each with its own oracle and "
             f"LLM client ({', '.join(sorted({i['llm'] for i in info}))})")

    def concurrency(self, run_concurrency: int | None) -> int:
        """Features in flight: the run's setting, else per worker 1 (in-process LLM) or 32 (a server)."""
        return run_concurrency or len(self.workers.actors) * (1 if self.local_llm else 32)

    async def explain(self, item, record, progress=None):
        result, ops = await self.workers.call(item.feature, "explain", item.method, item.fingerprint, record)
        replay(self.store, ops)
        return result

    async def score(self, item, record):
        result, seconds, ops = await self.workers.call(item.explanation["feature"], "score", item.explanation,
                                                       item.scorer_name, item.config_hash, record)
        replay(self.store, ops)
        return result, seconds

    def done(self, feature: int) -> None:
        self.workers.release(feature)

    async def aclose(self) -> None:
        for a in list(self.workers.actors.values()):
            try:
                await a.close.remote()
            except self.ray.exceptions.RayError:
                pass
        self.workers.close()
