"""Scale-out on Ray (docs/distributed.md): `saexplain cache --ray` and `saexplain run --ray`.

`RaySession` is what the cache and run commands are given: Ray for the length of the command, cache workers
(distributed/cache.py) and the run's executor (distributed/run.py). Planning and persisting stay in the driver —
the store has one writer — and workers execute: shards, explanations, scores. Nothing here is imported unless
--ray is asked for."""

from __future__ import annotations

from typing import Self

from saexplain.distributed.config import RayConfig


class RaySession:
    """`with RaySession(cfg) as ray:` — connected (or started) for the command, stopped (or left) at its end."""

    def __init__(self, cfg: RayConfig, echo=print):
        self.cfg, self.echo = cfg, echo
        self._ctx = None
        self.ray = None
        self._closers: list = []
        self.run_executor = None  # the last run's (its workers: what a test kills)

    def __enter__(self) -> Self:
        from saexplain.distributed.cluster import connect

        self._ctx = connect(self.cfg)
        self.ray = self._ctx.__enter__()
        res = self.ray.cluster_resources()
        where = "started on this machine" if self.cfg.ray == "local" else f"at {self.cfg.ray}"
        self.echo(f"ray: cluster {where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
                  f"{len(self.ray.nodes())} node(s)")
        return self

    def cache_workers(self, subject):
        from saexplain.distributed.cache import RayCacheWorkers

        workers = RayCacheWorkers(self.ray, self.cfg, subject, self.echo)
        self._closers.append(workers.close)
        return workers

    def executor(self, cfgs, run_id: int, store):
        from saexplain.distributed.run import RayExecutor

        self.run_executor = RayExecutor(self.ray, self.cfg, cfgs.to_dict(), run_id, store, self.echo)
        return self.run_executor

    def __exit__(self, *exc) -> None:
        for close in self._closers:
            close()
        self._ctx.__exit__(*exc)


__all__ = ["RayConfig", "RaySession"]
