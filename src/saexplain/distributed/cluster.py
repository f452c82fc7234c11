"""Connecting to Ray and keeping a set of workers (Ray actors) busy, re-queueing the work of one that dies.

What is shipped to a worker: configs (JSON-able dicts), `$SAEXPLAIN_HOME` and the driver's working directory
(so relative corpus and model paths mean the same on every node of a shared filesystem), and per call a shard
range or one feature's record (its example windows, a few kB). Never the cache, the store or a model."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saexplain.distributed.config import RayConfig
from saexplain.errors import ConfigError, SaexplainError
from saexplain.paths import home

log = logging.getLogger(__name__)

# environment a worker needs to find what the driver finds (models, SAEs, caches) and to stay offline
SHIPPED_ENV = ("SAEXPLAIN_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE")


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    return ray


@contextmanager
def connect(cfg: RayConfig):
    """Ray for the length of a command: started here (`--ray` alone / `local`), or joined (`auto`, `ray://…`,
    `host:port`). A Ray this command started stops with it; a joined cluster is left running."""
    ray = _ray()
    env = {k: os.environ[k] for k in SHIPPED_ENV if os.environ.get(k)}
    env["SAEXPLAIN_HOME"] = str(home())
    runtime_env = {"env_vars": env}
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "runtime_env": runtime_env}
    if cfg.ray == "local":
        kw["num_cpus"] = cfg.ray_num_cpus
        address = None
    else:
        address = cfg.ray
    try:
        ray.init(address=address, **kw)
    except ConnectionError as e:
        raise SaexplainError(f"--ray {cfg.ray}: no Ray cluster there ({e}); start one with `ray start --head` "
                             f"or use --ray alone for one on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_count(cfg: RayConfig, ray) -> int:
    """--ray-workers, else one per GPU (with --ray-gpus-per-worker) or per --ray-cpus-per-worker CPUs."""
    if cfg.ray_workers:
        return cfg.ray_workers
    res = ray.cluster_resources()
    if cfg.ray_gpus_per_worker:
        n = int(res.get("GPU", 0) // cfg.ray_gpus_per_worker)
        if not n:
            raise SaexplainError(f"--ray-gpus-per-worker {cfg.ray_gpus_per_worker:g}: the Ray cluster has "
                                 f"{res.get('GPU', 0):g} GPUs")
        return n
    return max(1, int(res.get("CPU", 1) // cfg.ray_cpus_per_worker))


def node_overrides(cfg: RayConfig) -> dict[str, dict[str, Any]]:
    """The --ray-nodes file: {node address: {LLM field: value}}; "*" applies to every node not listed."""
    if not cfg.ray_nodes:
        return {}
    path = Path(cfg.ray_nodes)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--ray-nodes: no file {path}") from None
    except ValueError as e:
        raise ConfigError(f"--ray-nodes {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"--ray-nodes {path}: expected {{node address: {{\"llm\": …}}}}")
    return data


class Workers:
    """A set of Ray actors of one class. `map` keeps every live worker busy with items from a queue; `call`
    sends one item to the worker its key is assigned to (the least busy when first seen). A worker that dies
    (node lost, process killed, `ray.kill`) is dropped, a replacement is started (up to as many as there were
    workers), and its unfinished items go to the others — nothing is lost, and nothing is done twice, because a
    result only counts when the driver receives it."""

    def __init__(self, ray, actor_class, n: int, options: dict[str, Any], *args, name: str = "worker"):
        self.ray, self.name, self.args = ray, name, args
        self.remote = ray.remote(actor_class).options(max_restarts=0, **options)
        self.actors: dict[int, Any] = {}
        self.busy: dict[int, int] = {}
        self._next = 0
        self.replacements_left = n
        self.died: list[str] = []
        self.served: dict[int, int] = {}  # results each worker delivered
        self._assigned: dict[Any, int] = {}
        for _ in range(n):
            self._start()

    def _start(self) -> int:
        i = self._next
        self._next += 1
        self.actors[i] = self.remote.remote(*self.args)
        self.busy[i] = 0
        return i

    def ready(self) -> list[dict]:
        """Every worker's `ready()` (where it runs, what it loaded); a worker that cannot start is one error."""
        try:
            return self.ray.get([a.ready.remote() for a in self.actors.values()])
        except self.ray.exceptions.RayActorError as e:
            raise SaexplainError(f"a Ray {self.name} could not start: {_cause(e)}") from None

    def _died(self, i: int, err: Exception) -> None:
        if i not in self.actors:
            return
        del self.actors[i]
        self.busy.pop(i, None)
        self.died.append(f"{self.name} {i}: {_cause(err)}")
        log.warning("Ray %s %d died (%s); its work goes to the others", self.name, i, _cause(err))
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._start()

    def _pick(self, key) -> int:
        if not self.actors:
            raise SaexplainError(f"every Ray {self.name} died ({'; '.join(self.died[-3:])}); the same command "
                                 f"resumes what they did not finish")
        i = self._assigned.get(key)
        if i not in self.actors:
            i = min(self.actors, key=lambda j: (self.busy[j], j))
            self._assigned[key] = i
        return i

    async def call(self, key, method: str, *args):
        """`method(*args)` on the worker of `key`; on another one if that worker dies meanwhile."""
        while True:
            i = self._pick(key)
            self.busy[i] += 1
            try:
                result = await getattr(self.actors[i], method).remote(*args)
                self.served[i] = self.served.get(i, 0) + 1
                return result
            except self.ray.exceptions.RayActorError as e:
                self._died(i, e)
            except self.ray.exceptions.RayTaskError as e:
                raise _unwrap(e) from None
            finally:
                if i in self.busy:
                    self.busy[i] -= 1

    def release(self, key) -> None:
        self._assigned.pop(key, None)

    async def map(self, items: list, method: str, on_result: Callable[[Any, Any], Awaitable[None] | None]) -> None:
        """Every item through `method(item)`, each worker pulling the next item when it is free; `on_result(item,
        result)` in the driver as each finishes."""
        queue = list(reversed(items))

        async def pull(i: int) -> None:
            while queue and i in self.actors:
                item = queue.pop()
                try:
                    result = await getattr(self.actors[i], method).remote(item)
                except self.ray.exceptions.RayTaskError as e:
                    raise _unwrap(e) from None
                except self.ray.exceptions.RayActorError as e:
                    queue.append(item)
                    before = set(self.actors)
                    self._died(i, e)
                    for j in set(self.actors) - before:  # its replacement starts pulling
                        pullers.append(asyncio.ensure_future(pull(j)))
                    return
                self.served[i] = self.served.get(i, 0) + 1
                out = on_result(item, result)
                if asyncio.iscoroutine(out):
                    await out

        pullers = [asyncio.ensure_future(pull(i)) for i in list(self.actors)]
        while pullers:
            done = pullers[:]
            pullers.clear()
            await asyncio.gather(*done)
        if queue:
            raise SaexplainError(f"every Ray {self.name} died ({'; '.join(self.died[-3:])}); the same command "
                                 f"resumes what they did not finish")

    def close(self) -> None:
        for a in self.actors.values():
            self.ray.kill(a)
        self.actors.clear()


def _unwrap(err: Exception) -> Exception:
    """The error a worker's method raised, as itself (a SaexplainError stays one line)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


def _cause(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:300] if text else type(err).__name__


def safe_exception(e: BaseException) -> BaseException:
    """An exception as a result crossing to the driver: itself when it pickles, else its type and text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def worker_chdir(cwd: str) -> None:
    """Relative paths in configs mean what they meant for the driver, where its folder exists (shared FS)."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
