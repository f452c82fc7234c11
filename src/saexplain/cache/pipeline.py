"""`saexplain cache`: corpus → contexts → latent cache → per-feature statistics in the store."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from saexplain.cache.latents import CacheConfig, LatentCache, top_token_ids, write_shards
from saexplain.data.contexts import Contexts, CorpusConfig, build_contexts
from saexplain.fingerprint import path_fingerprint
from saexplain.locks import exclusive
from saexplain.paths import home
from saexplain.store import Store
from saexplain.subject.oracle import Oracle, SubjectConfig

log = logging.getLogger(__name__)


def default_store_path() -> Path:
    return home() / "saexplain.db"


@dataclass
class CacheRun:
    run_id: int
    cache: LatentCache
    contexts: Contexts
    config: dict
    key: str = ""  # the cache's content identity (its run's config hash; its folder's name)


def cache_config_json(subject: SubjectConfig, corpus: CorpusConfig, cache: CacheConfig) -> dict:
    """What identifies a cache: the model + SAE (with their files' fingerprints), the corpus (with its files'
    fingerprint and the readers' version), and the cache layout; speed settings (device, batch sizes) are left
    out: they change how fast, not what."""
    from saexplain.subject.sae import default_sae_dir

    sae_path = str(default_sae_dir()) if subject.sae == "default" else subject.sae
    return {"subject": subject.identity(), "sae_fingerprint": path_fingerprint(sae_path),
            "model_fingerprint": path_fingerprint(subject.model),
            "corpus": corpus.identity(), "corpus_fingerprint": corpus.fingerprint(),
            "cache": cache.identity()}


def cache_key(subject: SubjectConfig, corpus: CorpusConfig, cache: CacheConfig) -> tuple[str, str]:
    """The cache's key (its run's config hash and folder name) and its config JSON."""
    text = json.dumps(cache_config_json(subject, corpus, cache), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


class LocalCacheWorkers:
    """Tokenising, shard writing and token decoding with one oracle in this process (loaded on first need). The
    Ray workers (distributed/cache.py) offer the same four members and run them on their nodes."""

    def __init__(self, subject: SubjectConfig, oracle: Oracle | None = None):
        self.subject, self._oracle = subject, oracle

    @property
    def oracle(self) -> Oracle:
        if self._oracle is None:
            self._oracle = Oracle.from_config(self.subject)
        return self._oracle

    @property
    def d_sae(self) -> int:
        return self.oracle.d_sae

    def contexts(self, corpus: CorpusConfig, max_tokens: int, progress: bool) -> Contexts:
        return build_contexts(corpus, self.oracle.subject.tokenizer, max_tokens=max_tokens,
                              bos=self.oracle.subject.prepend_bos, progress=progress)

    def write_shards(self, contexts: Contexts, cache: CacheConfig, path: Path, due: list[tuple[int, int]],
                     progress: bool) -> None:
        write_shards(self.oracle, contexts, cache, path, due, progress)

    def decode(self, ids: list[list[int]]) -> list[list[str]]:
        decode = self.oracle.subject.tokenizer.decode
        return [[decode([int(i)]) for i in row] for row in ids]


def build_cache(subject: SubjectConfig, corpus: CorpusConfig, cache: CacheConfig, store: Store,
                oracle: Oracle | None = None, progress: bool = True, workers=None) -> CacheRun:
    """The cache of (subject, corpus, cache settings), built or resumed — by `workers` (default: this process)
    — then its per-feature statistics into the store. One process plans and finishes a cache at a time (the
    folder's lock); whoever writes the shards, the files are the same."""
    key, text = cache_key(subject, corpus, cache)
    config = json.loads(text)
    run_id = store.get_or_create_run("cache", key, text)
    path = home() / "caches" / key
    workers = workers or LocalCacheWorkers(subject, oracle)
    if (path / "meta.json").is_file() and json.loads((path / "meta.json").read_text()).get("complete"):
        latents = LatentCache(path)
        contexts = Contexts.open(Path(latents.meta["contexts_path"]))
    else:
        contexts = workers.contexts(corpus, cache.tokens, progress)
        path.mkdir(parents=True, exist_ok=True)
        with exclusive(path / ".lock", "this latent cache"):
            due = LatentCache.plan(workers.d_sae, contexts, cache, path, config)
            if due:
                workers.write_shards(contexts, cache, path, due, progress)
            latents = LatentCache.finish(path)
    if not store.feature_stats(run_id, limit=1):
        stats = latents.statistics(progress=progress)
        top = latents.top_activations(50, progress=progress)
        with_top = [row for row in stats if row["feature"] in top]
        ids = [top_token_ids(contexts.tokens, *top[row["feature"]], n=5).tolist() for row in with_top]
        for row, strings in zip(with_top, workers.decode(ids)):
            row["top_tokens"] = strings
        store.put_feature_stats(run_id, stats)
    store.set_run_status(run_id, "complete")
    return CacheRun(run_id, latents, contexts, config, key)


def open_cache_run(store: Store, run_id: int) -> CacheRun:
    """A finished cache run from the store (its config says where the cache and the contexts are)."""
    from saexplain.errors import SaexplainError

    run = store.run(run_id)
    if run["kind"] != "cache":
        raise SaexplainError(f"run {run_id} is a {run['kind']} run, not a cache run")
    path = home() / "caches" / run["config_hash"]
    latents = LatentCache(path)
    if not latents.meta.get("complete"):
        raise SaexplainError(f"cache run {run_id} is not finished: run `saexplain cache` again to resume it")
    return CacheRun(run_id, latents, Contexts.open(Path(latents.meta["contexts_path"])), json.loads(run["config_json"]),
                    run["config_hash"])
