"""`saexplain cache --ray`: the latent cache written by Ray workers.

The driver plans (which shard ranges are due — a killed build resumes with the ranges that have no file, in
whatever order they were written), the workers each load the subject once and write whole shards into the cache
folder, and the driver finishes (manifest) and computes the statistics from the shards. The same range gives the
same bytes whoever writes it (same batches from the range's start, no time stamps in the file), so a cache made on
Ray is byte-identical to the one made in one process — its manifest's sha256s are equal (tested). The cache folder
must be on a filesystem every worker sees at the same path (`$SAEXPLAIN_HOME`)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from saexplain.cache.config import CacheConfig
from saexplain.data.contexts import Contexts, CorpusConfig
from saexplain.distributed.cluster import Workers, worker_chdir, worker_count
from saexplain.distributed.config import RayConfig
from saexplain.errors import SaexplainError
from saexplain.subject.config import SubjectConfig


class CacheWorker:
    """A Ray actor: one oracle (the subject on this worker's device), writing the shards it is given."""

    def __init__(self, subject: dict, cwd: str):
        from saexplain.subject.oracle import Oracle

        worker_chdir(cwd)
        self.oracle = Oracle.from_config(SubjectConfig(**subject))
        self._contexts: dict[str, Contexts] = {}

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "d_sae": self.oracle.d_sae}

    def contexts(self, corpus: dict, max_tokens: int) -> str:
        """Tokenise the corpus (or find it tokenised) into $SAEXPLAIN_HOME; its folder."""
        from saexplain.data.contexts import build_contexts

        ctx = build_contexts(CorpusConfig(**corpus), self.oracle.subject.tokenizer, max_tokens=max_tokens,
                             bos=self.oracle.subject.prepend_bos, progress=False)
        return str(ctx.path)

    def shard(self, job: tuple[str, str, dict, int, int]) -> dict:
        """Write one shard: (contexts folder, cache folder, cache settings, start, end) → its manifest entry."""
        from saexplain.cache.latents import write_shard

        contexts_path, cache_path, cache, start, end = job
        for p in (contexts_path, cache_path):
            if not Path(p).is_dir():
                raise SaexplainError(f"Ray worker on {socket.gethostname()} cannot see {p}: the cache lives in "
                                     f"$SAEXPLAIN_HOME, which must be a filesystem every node shares at the same "
                                     f"path (docs/distributed.md)")
        if contexts_path not in self._contexts:
            self._contexts[contexts_path] = Contexts.open(Path(contexts_path))
        return write_shard(self.oracle, self._contexts[contexts_path], CacheConfig(**cache), Path(cache_path),
                           start, end)

    def decode(self, ids: list[list[int]]) -> list[list[str]]:
        decode = self.oracle.subject.tokenizer.decode
        return [[decode([int(i)]) for i in row] for row in ids]


class RayCacheWorkers:
    """What `build_cache` asks of its workers (as `LocalCacheWorkers`), done by Ray actors. Started on first
    need: a cache that is already complete starts none."""

    def __init__(self, ray, cfg: RayConfig, subject: SubjectConfig, echo=print):
        self.ray, self.cfg, self.subject, self.echo = ray, cfg, subject, echo
        self._workers: Workers | None = None
        self._d_sae: int | None = None

    @property
    def workers(self) -> Workers:
        if self._workers is None:
            n = worker_count(self.cfg, self.ray)
            opts = {"num_cpus": self.cfg.ray_cpus_per_worker, "num_gpus": self.cfg.ray_gpus_per_worker}
            self._workers = Workers(self.ray, CacheWorker, n, opts, self.subject.model_dump(mode="json"),
                                    os.getcwd(), name="cache worker")
            info = self._workers.ready()
            self._d_sae = info[0]["d_sae"]
            hosts = sorted({i["host"] for i in info})
            self.echo(f"ray: {n} cache worker(s) on {len(hosts)} node(s) ({', '.join(hosts)})")
        return self._workers

    @property
    def d_sae(self) -> int:
        self.workers  # noqa: B018  (started on first need)
        return int(self._d_sae)

    def _any(self):
        return next(iter(self.workers.actors.values()))

    def contexts(self, corpus: CorpusConfig, max_tokens: int, progress: bool) -> Contexts:
        path = self.ray.get(self._any().contexts.remote(corpus.model_dump(mode="json"), max_tokens))
        if not Path(path).is_dir():
            raise SaexplainError(f"the corpus was tokenised into {path} on a Ray worker, and this machine cannot see "
                                 f"it: $SAEXPLAIN_HOME must be a filesystem shared by every node")
        return Contexts.open(Path(path))

    def write_shards(self, contexts: Contexts, cache: CacheConfig, path: Path, due: list[tuple[int, int]],
                     progress: bool) -> None:
        from saexplain.cache.latents import shard_progress

        jobs = [(str(contexts.path), str(path), cache.model_dump(mode="json"), a, b) for a, b in due]
        with shard_progress(contexts, cache, due, f"caching on {len(self.workers.actors)} Ray workers",
                            progress) as bar:
            def finished(job, entry):
                bar.update((job[4] - job[3]) * contexts.length)

            asyncio.run(self.workers.map(jobs, "shard", finished))

    def decode(self, ids: list[list[int]]) -> list[list[str]]:
        return self.ray.get(self._any().decode.remote(ids))

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
