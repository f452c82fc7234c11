"""The end-to-end run: cache → sample → explain → score → report, resumable per (feature, method) and per
(explanation, scorer). Every stage's config is saved in the run's row of the store (and beside its report).

A run's identity is what its explanations depend on (model, SAE, corpus, cache, sampling, LLM, explainer
settings): the same command again resumes it; more features, explainers or scorers extend it. Finished
explanations and scores are never recomputed or duplicated; failed ones are recorded and retried next time."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saexplain.cache.pipeline import CacheRun, build_cache, cache_key, default_store_path
from saexplain.errors import ConfigError, SaexplainError
from saexplain.llm import LLM, LLMError
from saexplain.pipeline.configs import EXPLAINER_CONFIG, SCORER_CONFIG, RunConfig, StageConfigs  # noqa: F401
from saexplain.sampling.pipeline import sample_features
from saexplain.sampling.record import FeatureRecord, make_record
from saexplain.sampling.search import CorpusSearch
from saexplain.status import Status
from saexplain.store import StaleScore, Store
from saexplain.subject.oracle import Oracle

log = logging.getLogger(__name__)

def choose_features(spec: str, stats: list[dict], run: RunConfig) -> list[int]:
    """'3,17,40' | 'top:N' | 'random:N'; top/random among live features inside the density band."""
    spec = spec.strip()
    by_id = {r["feature"]: r for r in stats}
    if ":" not in spec:
        try:
            ids = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--features {spec!r}: give ids like 3,17,40 or top:N or random:N") from None
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ConfigError(f"--features: unknown feature id {unknown[0]} (the SAE has {len(stats)} features)")
        return ids
    how, _, n = spec.partition(":")
    try:
        count = int(n)
    except ValueError:
        raise ConfigError(f"--features {spec!r}: N must be an integer") from None
    band = [r for r in stats if not r["dead"] and run.min_density <= r["frequency"] <= run.max_density]
    if how == "top":
        return [r["feature"] for r in sorted(band, key=lambda r: -r["frequency"])[:count]]
    if how == "random":
        rng = np.random.default_rng(run.feature_seed)
        pick = rng.permutation(len(band))[:count]
        return sorted(band[i]["feature"] for i in pick)
    raise ConfigError(f"--features {spec!r}: use ids, top:N or random:N")


class Components:
    """A run's explainers and scorers, each made once with its fingerprint (explainers) or config hash
    (scorers): a fingerprint reads prompt and code files and, for SAEExplainer stages, hashes the adapter weights
    — not once per feature. The driver's run handle and every Ray worker hold one."""

    def __init__(self, configs: StageConfigs):
        self.configs = configs
        self._made: dict[tuple[str, str], tuple[Any, str]] = {}

    def explainer(self, name: str) -> tuple[Any, str]:
        if ("explainer", name) not in self._made:
            explainer = self.configs.explainer(name)
            self._made[("explainer", name)] = (explainer, explainer.fingerprint())
        return self._made[("explainer", name)]

    def scorer(self, name: str) -> tuple[Any, str]:
        if ("scorer", name) not in self._made:
            scorer = self.configs.scorer(name)
            self._made[("scorer", name)] = (scorer, scorer.cfg.hash())
        return self._made[("scorer", name)]


@dataclass
class RunHandle:
    run_id: int
    configs: StageConfigs
    cache: CacheRun
    records: dict[int, FeatureRecord]
    folder: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # stage → done/skipped/degraded/failed
    timing: dict[str, float] = field(default_factory=dict)  # the explain/score loop: wall and CPU seconds
    config_json: str = ""  # this invocation's configs, features and cache key (saved by `run`)
    components: Components = field(init=False, repr=False)

    def __post_init__(self):
        self.components = Components(self.configs)

    def explainer(self, name: str) -> tuple[Any, str]:
        """The run's explainer `name` and its fingerprint, made once per run."""
        return self.components.explainer(name)

    def scorer(self, name: str) -> tuple[Any, str]:
        """The run's scorer `name` and the hash of its config, made once per run."""
        return self.components.scorer(name)

    @property
    def ok(self) -> bool:
        """Nothing of this invocation failed or was degraded."""
        return not any(c.get("failed") or c.get("degraded") for c in self.counts.values())


def run_folder(run_id: int, store_path: str | Path | None = None) -> Path:
    """Where a run's config and report go: beside its store (run ids are per store)."""
    store_path = Path(store_path) if store_path else default_store_path()
    return store_path.parent / f"{store_path.stem}-runs" / str(run_id)


def load_records(cfgs: StageConfigs, store: Store, oracle: Oracle | None, features: list[int] | None = None,
                 echo: Callable[[str], None] = print, cache_workers=None
                 ) -> tuple[CacheRun, dict[int, FeatureRecord]]:
    """The cache (built or reused; by `cache_workers` when given) and the records of `features` (None: the run
    config's choice)."""
    t0 = time.perf_counter()
    cache = build_cache(cfgs.subject, cfgs.corpus, cfgs.cache, store, oracle=oracle, progress=True,
                        workers=cache_workers)
    stats = store.feature_stats(cache.run_id)
    echo(f"cache: {cache.cache.n_contexts * cache.cache.context:,} tokens, {len(stats)} features "
         f"({time.perf_counter() - t0:.1f}s)")
    if features is None:
        features = choose_features(cfgs.run.features, stats, cfgs.run)
        if not features:
            raise SaexplainError(f"no feature matches --features {cfgs.run.features} in the density band "
                                 f"[{cfgs.run.min_density:g}, {cfgs.run.max_density:g}]")
    if not features:
        return cache, {}
    t1 = time.perf_counter()
    _, examples = sample_features(cache, features, cfgs.sampling, store, progress=True)
    by_id = {r["feature"]: r for r in stats}
    corpus = CorpusSearch(cache.cache.path, cache.contexts.path, cfgs.sampling.seed, cfgs.sampling.explain_share)
    records = {f: make_record(f, by_id[f], examples[f], cache.contexts, corpus.bind(f)) for f in features}
    echo(f"sample: {len(features)} features, explain/score pools drawn ({time.perf_counter() - t1:.1f}s)")
    return cache, records


def prepare(cfgs: StageConfigs, store: Store, oracle: Oracle | None, features: list[int] | None = None,
            echo: Callable[[str], None] = print, cache_workers=None) -> RunHandle:
    """Cache (reused when present), feature choice, sampling, records; the run's row in the store."""
    cache, records = load_records(cfgs, store, oracle, features, echo, cache_workers)
    if not records:
        raise SaexplainError("no feature to run on")
    features = list(records)
    config_json = json.dumps({**cfgs.to_dict(), "features": features, "cache_key": cache.key},
                             sort_keys=True)  # features: held out; cache_key: the data it was made on
    run_id = find_or_create_run(store, cfgs, cache.key, config_json)
    return RunHandle(run_id, cfgs, cache, records, run_folder(run_id, store.path), config_json=config_json)


def save_run_config(h: RunHandle, store: Store) -> None:
    """This invocation's lists and settings, in the store and beside the report (by the lease's holder)."""
    store.set_run_config(h.run_id, h.config_json)
    h.folder.mkdir(parents=True, exist_ok=True)
    (h.folder / "config.json").write_text(json.dumps(h.configs.to_dict(), indent=2, sort_keys=True) + "\n")


def find_or_create_run(store: Store, cfgs: StageConfigs, cache_key: str, config_json: str) -> int:
    """The run with this identity. A run stored by an earlier version whose identity was computed without a
    field added since is found too: every stored config is read with today's code (a new field takes its
    default, exactly what that run ran with) and compared; a match gets today's identity recorded."""
    ident = cfgs.identity(cache_key)
    found = store.find_run("run", ident)
    if found is not None:
        return found
    for row in store.runs("run"):
        stored = json.loads(row["config_json"])
        if stored.get("cache_key") != cache_key:
            continue
        try:
            old = StageConfigs.from_dict(stored)
        except ConfigError:  # a field since removed: not the same settings
            continue
        if old.identity(cache_key) == ident:
            store.set_run_hash(row["id"], ident)
            return int(row["id"])
    return store.get_or_create_run("run", ident, config_json)


def _counts() -> dict[str, int]:
    return {"done": 0, "skipped": 0, "degraded": 0, "failed": 0}


# ------------------------------------------------------------------------------ plan → execute → persist
@dataclass
class ExplainItem:
    feature: int
    method: str
    explainer: Any
    fingerprint: str


@dataclass
class ScoreItem:
    explanation: dict  # the stored row (id, feature, method, description, text_hash)
    scorer_name: str
    scorer: Any
    config_hash: str


def plan_explanations(h: RunHandle, store: Store, feature: int) -> list[ExplainItem]:
    """The (feature, method) items due: no ok row made with the explainer's current fingerprint ('' = made
    before explanations kept their fingerprint: kept)."""
    due = []
    for name in h.configs.run.explainer_names:
        explainer, fp = h.explainer(name)
        have = store.explanations(h.run_id, feature=feature, method=name)
        if not (have and have[0]["status"] == Status.OK and have[0]["config_hash"] in ("", fp)):
            due.append(ExplainItem(feature, name, explainer, fp))
    return due


def plan_scores(h: RunHandle, store: Store, feature: int, scorers: list[str]) -> tuple[list[ScoreItem], int]:
    """The (explanation, scorer) items due for the feature's ok explanations: no ok score made with the
    scorer's current config on the explanation's current text. Also returns how many are already done."""
    due, done = [], 0
    for e in store.explanations(h.run_id, feature=feature, ok_only=True):
        for name in scorers:
            scorer, cfg_hash = h.scorer(name)
            old = store.score(e["id"], name)
            if old is not None and old["status"] == Status.OK and old["config_hash"] == cfg_hash \
                    and old["text_hash"] == e["text_hash"]:
                done += 1
            else:
                due.append(ScoreItem(e, name, scorer, cfg_hash))
    return due, done


async def execute_explanation(item: ExplainItem, record: FeatureRecord, llm: LLM, oracle: Oracle,
                              progress: Callable[[str], None] | None = None):
    """An item in, an Explanation or the exception out: no store, no shared state (`progress` hears of its
    LLM steps)."""
    try:
        return await item.explainer.explain(record, llm, oracle, progress)
    except Exception as e:  # noqa: BLE001  a failure is a result too (persisted as a failed row)
        return e


async def execute_score(item: ScoreItem, record: FeatureRecord, llm: LLM, oracle: Oracle):
    t0 = time.perf_counter()
    try:
        res = await item.scorer.score(record, item.explanation["description"], llm, oracle)
    except Exception as e:  # noqa: BLE001
        res = e
    return res, time.perf_counter() - t0


class LocalExecutor:
    """Executes items in this process, with the command's LLM client and oracle. The Ray executor
    (distributed/run.py) has the same three methods and executes on workers; planning and persisting stay in the
    command's process either way."""

    def __init__(self, llm: LLM, oracle: Oracle):
        self.llm, self.oracle = llm, oracle

    async def explain(self, item: ExplainItem, record: FeatureRecord, progress: Callable[[str], None] | None = None):
        return await execute_explanation(item, record, self.llm, self.oracle, progress)

    async def score(self, item: ScoreItem, record: FeatureRecord):
        return await execute_score(item, record, self.llm, self.oracle)

    async def aclose(self) -> None:
        await self.llm.aclose()


def persist_explanation(store: Store, h: RunHandle, item: ExplainItem, result, counts: dict[str, int],
                        echo: Callable[[str], None]) -> None:
    f, name, fp = item.feature, item.method, item.fingerprint
    if isinstance(result, Exception):
        kept = store.put_explanation(h.run_id, f, name, "", [], {}, {}, [], error=_error_text(result),
                                     config_hash=fp, status=Status.FAILED) is None
        counts["failed"] += 1
        if not isinstance(result, LLMError):
            log.error("explainer %s failed on feature %s", name, f, exc_info=result)
        echo(f"  feature {f} {name}: FAILED ({_error_text(result)})"
             + ("; the earlier explanation is kept" if kept else ""))
        return
    exp = result
    kept = store.put_explanation(h.run_id, f, name, exp.description, exp.labels, exp.evidence, exp.usage,
                                 exp.trace, seconds=exp.seconds, config_hash=fp, status=exp.status,
                                 error=exp.reason) is None
    if exp.status == Status.OK:
        counts["done"] += 1
        echo(f"  feature {f} {name} ({exp.seconds:.0f}s, {exp.usage.get('calls', 0)} LLM calls): {exp.description}")
    else:
        counts["degraded"] += 1
        echo(f"  feature {f} {name}: DEGRADED ({exp.reason})"
             + ("; the earlier explanation is kept" if kept else f": {exp.description}"))


def persist_score(store: Store, item: ScoreItem, result, seconds: float, counts: dict[str, int],
                  echo: Callable[[str], None]) -> None:
    e, name = item.explanation, item.scorer_name
    where = f"  feature {e['feature']} {e['method']} {name}"
    if isinstance(result, Exception):
        if not isinstance(result, LLMError):
            log.error("scorer %s failed on feature %s", name, e["feature"], exc_info=result)
        if _put_score(store, e, name, None, {}, {}, item.config_hash, seconds, Status.FAILED, _error_text(result), echo):
            echo(f"{where}: FAILED ({_error_text(result)})")
        counts["failed"] += 1
        return
    if not _put_score(store, e, name, result.value, result.details, result.usage, item.config_hash, seconds,
                      result.status, result.reason, echo):
        counts["failed"] += 1
        return
    value = "n/a" if result.value is None else f"{result.value:.3f}"
    if result.status == Status.OK:
        counts["done"] += 1
        echo(f"{where}: {value} ({seconds:.0f}s)")
    else:
        counts["degraded"] += 1
        echo(f"{where}: DEGRADED {value} ({result.reason})")


async def explain_feature(h: RunHandle, store: Store, executor, feature: int, counts: dict[str, int],
                          echo: Callable[[str], None]) -> None:
    """Every due explainer of a feature at once; each result is persisted as it finishes."""
    due = plan_explanations(h, store, feature)
    counts["skipped"] += len(h.configs.run.explainer_names) - len(due)

    async def one(item: ExplainItem):
        result = await executor.explain(item, h.records[feature], progress=lambda m: echo(f"  feature {feature} {m}"))
        persist_explanation(store, h, item, result, counts, echo)

    await asyncio.gather(*(one(item) for item in due))


async def score_feature(h: RunHandle, store: Store, executor, feature: int, scorers: list[str],
                        counts: dict[str, int], echo: Callable[[str], None]) -> None:
    """Every due (explanation, scorer) of a feature at once; each score is persisted as it finishes."""
    due, done = plan_scores(h, store, feature, scorers)
    counts["skipped"] += done

    async def one(item: ScoreItem):
        result, seconds = await executor.score(item, h.records[feature])
        persist_score(store, item, result, seconds, counts, echo)

    await asyncio.gather(*(one(item) for item in due))


async def explain_stage(h: RunHandle, store: Store, llm: LLM, oracle: Oracle,
                        echo: Callable[[str], None] = print, features: list[int] | None = None) -> dict[str, int]:
    """Explain every due (feature, method): due when there is no ok row made with the explainer's current
    fingerprint. Degraded and failed results are stored with their reason (and retried by the next run); a
    result never replaces a better stored one."""
    counts = _counts()
    for f in features if features is not None else list(h.records):
        await explain_feature(h, store, LocalExecutor(llm, oracle), f, counts, echo)
    return counts


async def score_stage(h: RunHandle, store: Store, llm: LLM, oracle: Oracle, scorers: list[str] | None = None,
                      echo: Callable[[str], None] = print, features: list[int] | None = None,
                      concurrency: int = 1) -> dict[str, int]:
    """Score every ok explanation of `features` (default: the run's records) with every scorer, where no ok
    score made with the scorer's current config exists for the explanation's current text; `concurrency`
    features at a time."""
    counts = _counts()
    scorers = scorers or h.configs.run.scorer_names
    todo = [f for f in (features if features is not None else list(h.records)) if f in h.records]
    executor = LocalExecutor(llm, oracle)
    await for_each_feature(todo, concurrency,
                           lambda f: score_feature(h, store, executor, f, scorers, counts, echo))
    return counts


def progress_line(feature: int, done: int, total: int, elapsed: float) -> str:
    """A finished feature, the time so far and what is left at the rate measured so far."""
    left = elapsed / done * (total - done)
    eta = f", about {_clock(left)} left at the pace so far" if done < total else ""
    return f"feature {feature} finished ({done}/{total} features, {_clock(elapsed)} elapsed{eta})"


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_concurrency(run: RunConfig, llm: LLM) -> int:
    """Features in flight: the run's setting, else 1 for an in-process LLM (one model, one request at a time)
    and 32 for a server (the LLM client's max_concurrency caps the requests)."""
    return run.run_concurrency or (1 if getattr(llm.backend, "local", False) else 32)


async def for_each_feature(features: list[int], concurrency: int,
                           task: Callable[[int], Awaitable[None]]) -> None:
    """`task(feature)` for every feature, at most `concurrency` at a time."""
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(f: int) -> None:
        async with sem:
            await task(f)

    await asyncio.gather(*(one(f) for f in features))


def _put_score(store: Store, e: dict, name: str, value, details, usage, cfg_hash: str, seconds: float,
               status: str, reason: str | None, echo: Callable[[str], None]) -> bool:
    """Persist one score of explanation row `e`, tied to the text it was computed on; False when that
    explanation was replaced meanwhile (the score is dropped, with a message)."""
    try:
        store.put_score(e["id"], name, value, details, usage, cfg_hash, error=reason, seconds=seconds,
                        text=e["description"], status=status)
    except StaleScore as err:
        echo(f"  feature {e['feature']} {e['method']} {name}: not stored ({err})")
        return False
    return True


def _error_text(e: Exception) -> str:
    """LLM faults are expected and read as they are; anything else also names its type (a bug to report)."""
    return str(e) if isinstance(e, LLMError) else f"{type(e).__name__}: {e}"


class RunLease:
    """The run's writer lease for the duration of a command: taken (or refused with one line when another live
    process holds it), renewed by a heartbeat thread on its own connection, released at the end."""

    def __init__(self, store: Store, run_id: int, ttl: float = 60.0):
        self.store, self.run_id, self.ttl = store, run_id, ttl
        self.owner = store.claim_run(run_id, ttl=ttl)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-run-{run_id}")
        self._thread.start()

    def _beat(self) -> None:
        with Store(self.store.path) as db:
            while not self._stop.wait(self.ttl / 4):
                if not db.renew_run(self.run_id, self.owner, self.ttl):
                    log.warning("run %s: another process took over the writer lease", self.run_id)
                    return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release_run(self.run_id, self.owner)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def open_run(store: Store, run_id: int, oracle: Oracle | None = None, echo: Callable[[str], None] = print
             ) -> tuple[RunHandle, Oracle]:
    """A stored run, with the records of the features it has explanations for."""
    row = store.run(run_id)
    if row["kind"] != "run":
        raise SaexplainError(f"run {run_id} is a {row['kind']} run, not an explain/score run")
    stored = json.loads(row["config_json"])
    cfgs = StageConfigs.from_dict(stored)
    key, _ = cache_key(cfgs.subject, cfgs.corpus, cfgs.cache)
    if stored.get("cache_key") != key:
        raise SaexplainError(f"run {run_id} was made on other data than the model, SAE and corpus files hold now "
                             f"(or by an older saexplain): its features cannot be re-read; start a new run")
    if cfgs.identity(key) != row["config_hash"]:
        raise SaexplainError(f"run {run_id}: its stored settings do not give its identity; it was made by "
                             f"another saexplain version")
    oracle = oracle or Oracle.from_config(cfgs.subject)
    features = sorted({e["feature"] for e in store.explanations(run_id)})
    if not features:
        raise SaexplainError(f"run {run_id} has no explanations yet")
    h = prepare(cfgs, store, oracle, features, echo)
    if h.run_id != run_id:  # prepare finds the run by identity: it must be the one asked for
        raise SaexplainError(f"opened run {h.run_id} instead of run {run_id}")
    return h, oracle


def run_all(cfgs: StageConfigs, echo: Callable[[str], None] = print, backend=None, ray=None) -> RunHandle:
    """`saexplain run`: every stage, with the time of each; the outcome counts what failed or was degraded.
    `ray` (a distributed.RaySession): the cache and the items are executed on its workers; this process plans,
    persists and reports, as it does alone."""
    from saexplain.report import write_report

    store = Store(cfgs.run.store or default_store_path())
    try:
        t0 = time.perf_counter()
        oracle = cache_workers = None
        if ray is None:
            oracle = Oracle.from_config(cfgs.subject)
            echo(f"subject: {cfgs.subject.model} + SAE {cfgs.subject.sae} ({oracle.d_sae} features) "
                 f"({time.perf_counter() - t0:.1f}s)")
        else:
            cache_workers = ray.cache_workers(cfgs.subject)
        h = prepare(cfgs, store, oracle, echo=echo, cache_workers=cache_workers)
        if cache_workers is not None:
            cache_workers.close()  # their CPUs and GPUs go to the run's workers
        echo(f"run {h.run_id}: {len(h.records)} features × {', '.join(cfgs.run.explainer_names)}")
        totals = {"explain": [0.0, _counts()], "score": [0.0, _counts()]}
        with RunLease(store, h.run_id):
            save_run_config(h, store)  # after the lease: a refused second process changes nothing
            if ray is None:
                llm = LLM(cfgs.llm, store=store, run_id=h.run_id, backend=backend)
                executor = LocalExecutor(llm, oracle)
                concurrency = run_concurrency(cfgs.run, llm)
                echo(f"{concurrency} feature(s) in flight; LLM requests in flight ≤ {llm.max_in_flight}")
            else:
                executor = ray.executor(cfgs, h.run_id, store)
                concurrency = executor.concurrency(cfgs.run.run_concurrency)
                echo(f"{concurrency} feature(s) in flight; LLM requests in flight ≤ {executor.llm_in_flight} "
                     f"per worker")

            async def go():
                # a feature's explainers run together, then its scorers; every item persists as it finishes, so
                # a killed run keeps every finished item (stage seconds are summed over the features in flight)
                started = finished = 0
                t_loop = time.perf_counter()

                async def feature_task(f: int):
                    nonlocal started, finished
                    started += 1
                    echo(f"feature {f} ({started}/{len(h.records)})")
                    t = time.perf_counter()
                    await explain_feature(h, store, executor, f, totals["explain"][1], echo)
                    totals["explain"][0] += time.perf_counter() - t
                    t = time.perf_counter()
                    await score_feature(h, store, executor, f, cfgs.run.scorer_names, totals["score"][1], echo)
                    totals["score"][0] += time.perf_counter() - t
                    if hasattr(executor, "done"):
                        executor.done(f)
                    finished += 1
                    echo(progress_line(f, finished, len(h.records), time.perf_counter() - t_loop))

                try:
                    await for_each_feature(list(h.records), concurrency, feature_task)
                finally:
                    await executor.aclose()

            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(go())
            h.timing = {"loop_wall": time.perf_counter() - wall, "loop_cpu": time.process_time() - cpu,
                        "run_concurrency": concurrency}
        for stage, (secs, c) in totals.items():
            echo(f"{stage}: {c['done']} new, {c['skipped']} already done, {c['degraded']} degraded, "
                 f"{c['failed']} failed ({secs:.1f}s)")
        t = time.perf_counter()
        paths = write_report(store, h.run_id, h.folder)
        echo(f"report ({time.perf_counter() - t:.1f}s): {paths['markdown']}  {paths['png']}")
        h.counts = {k: c for k, (_, c) in totals.items()}
        store.set_run_status(h.run_id, "complete" if h.ok else "incomplete")
        return h
    finally:
        store.close()
