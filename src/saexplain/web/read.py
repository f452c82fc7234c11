"""What the web pages and the JSON API show, read from the store (read-only) and from the latent cache: the
pydantic models of `/api/` and the functions that fill them. Nothing here writes; nothing here loads a model
(the live probe and the logit lens are `probe.py`'s)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from saexplain.errors import ConfigError, NotFound, SaexplainError
from saexplain.paths import home
from saexplain.report import summarize
from saexplain.status import Status
from saexplain.store import Store


# ------------------------------------------------------------------------------------------------ models
class Counts(BaseModel):
    ok: int = 0
    degraded: int = 0
    failed: int = 0


class RunRow(BaseModel):
    id: int
    created: float
    status: str
    name: str | None
    model: str | None
    sae: str | None
    hookpoint: str | None
    llm: str | None
    explainers: list[str]
    scorers: list[str]
    features: int
    explanations: Counts
    scores: Counts
    llm_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None  # None: some call's price is unknown (never counted as $0)
    cache_run: int | None


class Cell(BaseModel):
    method: str
    scorer: str
    mean: float | None
    ci95: list[float | None]
    n: int
    degraded: int
    failed: int


class Paired(BaseModel):
    method: str
    baseline: str
    scorer: str
    delta: float | None
    ci95: list[float | None]
    n: int


class RunPage(BaseModel):
    run: RunRow
    settings: dict[str, Any]
    methods: list[str]
    table: list[Cell]
    paired: list[Paired]
    usage: dict[str, dict[str, float]]
    scorer_usage: dict[str, dict[str, float]]


class FeatureRow(BaseModel):
    feature: int
    density: float | None
    max_act: float | None
    explanations: dict[str, str]  # method → text (ok ones; others say their status)
    scores: dict[str, dict[str, float | None]]  # method → scorer → value (ok scores only)
    disagreement: float | None  # spread (max − min) of the methods' values on the sort scorer


class ScoreView(BaseModel):
    scorer: str
    value: float | None
    status: str
    error: str | None
    details: dict[str, Any]
    run_mean: float | None  # the method's mean on this scorer over the run, with its CI: context for the chip
    run_ci95: list[float | None]
    run_n: int


class ExplanationView(BaseModel):
    id: int
    run_id: int
    method: str
    description: str
    labels: list[str]
    status: str
    error: str | None
    redo_error: str | None
    scores: list[ScoreView]
    has_trace: bool
    llm_calls: int
    seconds: float


class WindowView(BaseModel):
    tokens: list[str]
    acts: list[float]
    max_act: float
    pool: str
    kind: str
    rank: int
    decile: int | None
    context: int
    start: int


class ExampleGroup(BaseModel):
    title: str
    pool: str
    windows: list[WindowView]


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class CandidateView(BaseModel):
    text: str
    reward: float | None  # max activation on texts written from it ÷ the feature's max
    error: str | None
    texts: list[str]
    greedy: bool = False  # the round's model's own greedy explanation (`greedy_rounds`), not a sampled one


class PairView(BaseModel):
    chosen: str
    rejected: str


class TrainingRound(BaseModel):
    folder: str
    round: int
    reward: str  # what the reward measures (the folder's `reward_source`)
    candidates: list[CandidateView]
    pairs: list[PairView]  # the DPO pairs the round trained on, from its record (none: `pair_reason` says why)
    pair_reason: str


class FeaturePage(BaseModel):
    feature: int
    run_id: int | None  # None: the per-SAE page (explanations of every run on this cache)
    cache_run: int
    density: float
    max_act: float
    n_nonzero: int
    dead: bool
    top_tokens: list[str]
    histogram: Histogram
    explanations: list[ExplanationView]
    examples: list[ExampleGroup]
    examples_off: str | None  # why the examples cannot be shown (e.g. the cache is not on this machine)
    saeexplainer: list[TrainingRound]  # SAEExplainer training rounds that had this feature (candidates, pairs)


class TraceEvent(BaseModel):
    kind: str  # exemplars | hypotheses | probe | verdict | refined | stop | conclusion | selection | error | llm
    step: int
    data: dict[str, Any]


class TraceView(BaseModel):
    run_id: int
    feature: int
    method: str
    description: str
    status: str
    error: str | None
    events: list[TraceEvent]


class SearchHit(BaseModel):
    run_id: int
    feature: int
    method: str
    description: str
    snippet: list[tuple[str, bool]]  # (text, matched) parts, for highlighting without HTML in the data


# ------------------------------------------------------------------------------------------------ reader
class Reader:
    """Opens the store read-only for each call (SQLite readers do not block the writer, WAL) and keeps the
    latent caches and tokenised corpora it has opened (memory-mapped) for later pages."""

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        with self.db():  # one clear line now if the file is not a store
            pass
        self._caches: OrderedDict[str, Any] = OrderedDict()
        self._summaries: dict[int, tuple[tuple, dict]] = {}  # run → (its store version, its report summary)
        self._lock = threading.Lock()

    def _summary(self, db: Store, run_id: int) -> dict:
        """The run's report summary (bootstrap CIs over every score), computed again only when the run changed:
        every feature page shows it as score context."""
        version = db.run_version(run_id)
        with self._lock:
            got = self._summaries.get(run_id)
        if got is None or got[0] != version:
            got = (version, summarize(db, run_id))
            with self._lock:
                self._summaries[run_id] = got
        return got[1]

    def db(self) -> Store:
        return Store(self.store_path, readonly=True)

    # --------------------------------------------------------------------------------------- runs
    def runs(self) -> list[RunRow]:
        with self.db() as db:
            return [self._run_row(db, r) for r in reversed(db.runs("run"))]

    def _run_row(self, db: Store, r: dict) -> RunRow:
        cfg = json.loads(r["config_json"])
        run, subject, llm = cfg.get("run", {}), cfg.get("subject", {}), cfg.get("llm", {})
        exps = db.explanations(r["id"])
        scores = db.scores(r["id"])
        calls = list(db.llm_usage(r["id"]).values())  # summed in SQL: a big run's call log is not loaded
        paid = [x["usage"] for x in exps + scores if x["usage"].get("calls")]
        cost = None if any(u.get("cost") is None for u in paid) else float(sum(u["cost"] for u in paid))
        cache_run = db.find_run("cache", cfg["cache_key"]) if cfg.get("cache_key") else None
        return RunRow(
            id=r["id"], created=r["created"], status=r["status"], name=run.get("name"),
            model=subject.get("model"), sae=subject.get("sae"), hookpoint=subject.get("hookpoint"),
            llm=llm.get("llm"), explainers=_names(run.get("explainers")), scorers=_names(run.get("scorers")),
            features=len({e["feature"] for e in exps}),
            explanations=Counts(**{s: sum(e["status"] == s for e in exps) for s in Status}),
            scores=Counts(**{s: sum(x["status"] == s for x in scores) for s in Status}),
            llm_calls=sum(c["calls"] or 0 for c in calls), tokens_in=sum(c["tokens_in"] or 0 for c in calls),
            tokens_out=sum(c["tokens_out"] or 0 for c in calls), cost_usd=cost, cache_run=cache_run)

    def run(self, run_id: int) -> RunPage:
        with self.db() as db:
            r = _run_of_kind(db, run_id, "run")
            s = self._summary(db, run_id)
            return RunPage(run=self._run_row(db, r), settings=s["config"], methods=s["methods"],
                           table=[Cell(**c) for c in s["table"].values()],
                           paired=[Paired(**p) for p in s["paired"].values()],
                           usage=s["usage"], scorer_usage=s["scorer_usage"])

    def feature_rows(self, run_id: int, sort: str = "feature", scorer: str | None = None,
                     method: str | None = None) -> list[FeatureRow]:
        """Every feature of a run with its explanations and ok scores, sorted by feature id, density, a
        method's score on `scorer`, or the disagreement between methods on `scorer` (largest first)."""
        with self.db() as db:
            r = _run_of_kind(db, run_id, "run")
            cfg = json.loads(r["config_json"])
            stats = {}
            cache_run = db.find_run("cache", cfg.get("cache_key", "")) if cfg.get("cache_key") else None
            if cache_run is not None:
                feats = sorted({e["feature"] for e in db.explanations(run_id)})
                for f in feats:
                    got = db.feature_stats(cache_run, f)
                    if got:
                        stats[f] = got[0]
            rows: dict[int, FeatureRow] = {}
            for e in db.explanations(run_id):
                row = rows.setdefault(e["feature"], FeatureRow(
                    feature=e["feature"], density=stats.get(e["feature"], {}).get("frequency"),
                    max_act=stats.get(e["feature"], {}).get("max_act"), explanations={}, scores={},
                    disagreement=None))
                row.explanations[e["method"]] = e["description"] if e["status"] == Status.OK else \
                    f"[{e['status']}] {e['description']}"
            for s in db.scores(run_id):
                if s["status"] == Status.OK and s["feature"] in rows:
                    rows[s["feature"]].scores.setdefault(s["method"], {})[s["scorer"]] = s["value"]
        scorers = _names(cfg.get("run", {}).get("scorers"))
        scorer = scorer or (scorers[0] if scorers else None)
        for row in rows.values():
            vals = [v[scorer] for v in row.scores.values() if v.get(scorer) is not None]
            row.disagreement = float(max(vals) - min(vals)) if len(vals) >= 2 else None
        out = list(rows.values())
        if sort == "feature":
            out.sort(key=lambda r: r.feature)
        elif sort == "density":
            out.sort(key=lambda r: -(r.density or 0.0))
        elif sort == "disagreement":
            out.sort(key=lambda r: (r.disagreement is None, -(r.disagreement or 0.0), r.feature))
        elif sort == "score":
            def key(r: FeatureRow):
                vals = [v.get(scorer) for m, v in r.scores.items() if method in (None, m)]
                vals = [v for v in vals if v is not None]
                return (not vals, -(max(vals) if vals else 0.0), r.feature)
            out.sort(key=key)
        else:
            raise SaexplainError(f"cannot sort features by {sort!r} (use feature, density, score, disagreement)")
        return out

    # ------------------------------------------------------------------------------------ feature page
    def feature(self, run_id: int, feature: int) -> FeaturePage:
        """The page of one feature in one run: its explanations and scores in that run, the run's example
        windows (explain and score pools apart)."""
        with self.db() as db:
            r = _run_of_kind(db, run_id, "run")
            cfg = json.loads(r["config_json"])
            cache_run = db.find_run("cache", cfg.get("cache_key", ""))
            if cache_run is None:
                raise NotFound(f"run {run_id}: its cache run is not in this store")
            exps = [e for e in db.explanations(run_id, feature)]
            if not exps:
                raise NotFound(f"run {run_id} has no explanation of feature {feature}")
            sample_run = _sample_run(db, cfg, cache_run)
            return self._feature_page(db, cache_run, feature, run_id, exps, sample_run, [cfg])

    def sae_feature(self, cache_run: int, feature: int) -> FeaturePage:
        """The page of one feature of an SAE (one cache: model + SAE + corpus): every run's explanations."""
        with self.db() as db:
            c = _run_of_kind(db, cache_run, "cache")
            exps, sample_run, cfgs = [], None, []
            for r in db.runs("run"):
                cfg = json.loads(r["config_json"])
                if cfg.get("cache_key") == c["config_hash"]:
                    got = db.explanations(r["id"], feature)
                    exps += got
                    cfgs.append(cfg)
                    if got and sample_run is None:
                        sample_run = _sample_run(db, cfg, cache_run)
            return self._feature_page(db, cache_run, feature, None, exps, sample_run, cfgs)

    def _feature_page(self, db: Store, cache_run: int, feature: int, run_id: int | None, exps: list[dict],
                      sample_run: int | None, run_cfgs: list[dict]) -> FeaturePage:
        stats = db.feature_stats(cache_run, feature)
        if not stats:
            raise NotFound(f"feature {feature} is not in cache run {cache_run}")
        st = stats[0]
        views = []
        by_run_summary: dict[int, dict] = {}
        scores_by_exp: dict[int, list[dict]] = {}
        for rid in sorted({e["run_id"] for e in exps}):
            by_run_summary[rid] = self._summary(db, rid)
            for s in db.scores(rid, feature):
                scores_by_exp.setdefault(s["explanation_id"], []).append(s)
        traced = {rid: db.traced_methods(rid, feature) for rid in by_run_summary}
        for e in exps:
            table = by_run_summary[e["run_id"]]["table"]
            chips = []
            for s in scores_by_exp.get(e["id"], []):
                cell = table.get(f"{e['method']}|{s['scorer']}", {})
                chips.append(ScoreView(scorer=s["scorer"], value=s["value"], status=s["status"], error=s["error"],
                                       details=s["details"], run_mean=cell.get("mean"),
                                       run_ci95=cell.get("ci95", [None, None]), run_n=cell.get("n", 0)))
            views.append(ExplanationView(
                id=e["id"], run_id=e["run_id"], method=e["method"], description=e["description"],
                labels=e["labels"], status=e["status"], error=e["error"], redo_error=e.get("redo_error"),
                scores=chips, has_trace=e["method"] in traced[e["run_id"]],
                llm_calls=int(e["usage"].get("calls", 0) or 0), seconds=float(e["seconds"] or 0.0)))
        groups, off = [], None
        if sample_run is None:
            off = "no examples were sampled for this feature in this store"
        else:
            try:
                groups = self._examples(db, cache_run, sample_run, feature)
            except SaexplainError as err:
                off = str(err)
        return FeaturePage(feature=feature, run_id=run_id, cache_run=cache_run, density=st["frequency"],
                           max_act=st["max_act"], n_nonzero=st["n_nonzero"], dead=st["dead"],
                           top_tokens=st["top_tokens"], histogram=Histogram(**st["histogram"]),
                           explanations=views, examples=groups, examples_off=off,
                           saeexplainer=training_rounds(run_cfgs, feature))

    def _open_cache(self, db: Store, cache_run: int):
        """(LatentCache, Contexts) of a cache run, kept open for later pages (at most 4)."""
        from saexplain.cache.latents import LatentCache
        from saexplain.data.contexts import Contexts

        key = db.run(cache_run)["config_hash"]
        with self._lock:
            if key in self._caches:
                self._caches.move_to_end(key)
                return self._caches[key]
        path = home() / "caches" / key
        if not (path / "meta.json").is_file():
            raise SaexplainError(f"the latent cache of this run is not on this machine ({path}); explanations "
                                 f"and scores are shown from the store")
        latents = LatentCache(path)
        contexts = Contexts.open(Path(latents.meta["contexts_path"]))
        with self._lock:
            self._caches[key] = (latents, contexts)
            while len(self._caches) > 4:
                self._caches.popitem(last=False)
        return latents, contexts

    def _examples(self, db: Store, cache_run: int, sample_run: int, feature: int) -> list[ExampleGroup]:
        rows = db.examples(sample_run, feature)
        if not rows:
            return []
        latents, contexts = self._open_cache(db, cache_run)
        values = latents.feature_values(feature, [r["context"] for r in rows])
        windows: dict[tuple[str, str], list[WindowView]] = {}
        for r in rows:
            strings, _ = contexts.window(r["context"], r["start"], r["end"])
            acts = values[r["context"]][r["start"]:r["end"]]
            key = (r["pool"], f"decile {r['decile']}" if r["kind"] == "quantile" else r["kind"])
            windows.setdefault(key, []).append(WindowView(
                tokens=strings, acts=[round(float(a), 4) for a in acts], max_act=float(acts.max(initial=0.0)),
                pool=r["pool"], kind=r["kind"], rank=r["rank"], decile=r["decile"], context=r["context"],
                start=r["start"]))
        names = {"top": "Top activations", "random": "Random windows (negatives)",
                 "hard_negative": "Hard negatives (similar text, no activation)"}
        out = []
        for pool in ("explain", "score"):
            order = sorted((k for k in windows if k[0] == pool), key=lambda k: _group_order(k[1]))
            for k in order:
                ws = sorted(windows[k], key=lambda w: (-w.max_act, w.rank))
                title = names.get(k[1]) or f"Interval: {k[1]}"
                out.append(ExampleGroup(title=title, pool=pool, windows=ws))
        return out

    # ------------------------------------------------------------------------------------------- traces
    def trace(self, run_id: int, feature: int, method: str) -> TraceView:
        with self.db() as db:
            exps = db.explanations(run_id, feature, method)
            if not exps:
                raise NotFound(f"run {run_id} has no {method} explanation of feature {feature}")
            e = exps[0]
            return TraceView(run_id=run_id, feature=feature, method=method, description=e["description"],
                             status=e["status"], error=e["error"],
                             events=trace_events(db.trace(run_id, feature, method)))


def training_rounds(run_cfgs: list[dict], feature: int) -> list[TrainingRound]:
    """SAEExplainer's candidates, rewards and DPO pairs for `feature`, from the training folders of the runs
    (their `saeexplainer.train_dir`) and those under $SAEXPLAIN_HOME/saeexplainer/ trained on the same model
    and SAE with this feature among the features their DPO rounds drew candidates for."""
    from saexplain.train.config import TrainConfig
    from saexplain.train.data import Candidate, load_jsonl, pair_features, round_pool, with_greedy

    folders = [Path(d).expanduser() for c in run_cfgs if (d := c.get("saeexplainer", {}).get("train_dir"))]
    root = home() / "saeexplainer"
    if root.is_dir():
        folders += sorted(p for p in root.iterdir() if (p / "split.json").is_file())
    subjects = {(c.get("subject", {}).get("model"), c.get("subject", {}).get("sae")) for c in run_cfgs}
    out = []
    for folder in dict.fromkeys(folders):
        try:
            conf = json.loads((folder / "config.json").read_text())
            split = json.loads((folder / "split.json").read_text())
            tcfg = TrainConfig(**{k: v for k, v in conf.get("training", {}).items() if k in TrainConfig.model_fields})
        except (OSError, ValueError, TypeError):
            continue  # not a finished training folder
        sub = conf.get("subject", {})
        if (sub.get("model"), sub.get("sae")) not in subjects:
            continue
        try:
            pool = round_pool(split, tcfg)  # the training features, or the unseen ones the rounds drew from
        except (ConfigError, KeyError):
            continue
        if feature not in pair_features(pool, tcfg):
            continue  # SFT only: no candidates (a candidates file copied from another folder may hold it)
        for rnd in (1, 2):
            rows = load_jsonl(folder / f"round{rnd}" / "candidates.jsonl")
            if feature not in rows:
                continue
            cands = [Candidate(**c) for c in with_greedy(rows[feature])]  # its greedy text shown too, marked
            g = rows[feature].get("greedy")
            pairs, why = round_pairs(folder / f"round{rnd}", feature)
            out.append(TrainingRound(
                folder=str(folder), round=rnd, pair_reason=why, pairs=pairs, reward=reward_text(tcfg),
                candidates=[CandidateView(text=c.text, reward=c.reward, error=c.error, texts=c.texts,
                                          greedy=bool(g) and c.text == g["text"]) for c in
                            sorted(cands, key=lambda c: (c.reward is None, -(c.reward or 0.0)))]))
    return out


def reward_text(cfg) -> str:
    """What a training folder's reward measures (its `reward_source`), for the page."""
    if cfg.reward_source == "corpus":
        return (f"the share of the candidate's quoted words' occurrences in the feature's explain pool where it "
                f"reaches {cfg.reward_fraction:g} × its max (corpus reward, no LLM)")
    if cfg.reward_source == "generation":
        return (f"the candidate's generation score: the share of the {cfg.reward_texts} sentences the generation "
                f"scorer's prompt wrote from it on which the feature reaches {cfg.reward_fraction:g} × its max")
    if cfg.reward_source == "share":
        return (f"the share of the texts an LLM wrote from the candidate on which the feature reaches "
                f"{cfg.reward_fraction:g} × its max")
    return "the feature's highest activation on texts an LLM wrote from the candidate, as a share of its max"


def round_pairs(round_dir: Path, feature: int) -> tuple[list[PairView], str]:
    """The DPO pairs a training round built for `feature`, read from the round's record — pairs.json (counts
    and why each dropped feature gave none) and pairs/, the dataset DPO trained on — or none with the reason."""
    summary_path = round_dir / "pairs.json"
    if not summary_path.is_file():
        return [], "the round's pairs are not built yet (its candidates are still being rewarded)"
    try:
        summary = json.loads(summary_path.read_text())
        total, dropped = int(summary["pairs"]), summary["dropped"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        return [], f"{summary_path} does not read ({type(e).__name__}: {e})"
    if str(feature) in dropped:
        return [], str(dropped[str(feature)])
    if total == 0:
        return [], "not among the round's pair features (pairs.json: no pair, and this feature not dropped)"
    if not (round_dir / "pairs").is_dir():
        return [], f"{round_dir / 'pairs'} is missing (pairs.json counts {total} pairs)"
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(round_dir / "pairs"))
    except (OSError, ValueError) as e:
        return [], f"{round_dir / 'pairs'} does not load ({type(e).__name__}: {e})"
    if len(data) != total:  # a dataset left from an earlier build of the round
        return [], f"{round_dir / 'pairs'} holds {len(data)} pairs, pairs.json counts {total}: not this round's"
    # the dataset's texts are completions after the prompt: a leading space each
    pairs = [PairView(chosen=c.removeprefix(" "), rejected=r.removeprefix(" "))
             for f, c, r in zip(data["feature"], data["chosen"], data["rejected"]) if f == feature]
    return pairs, ("ok" if pairs else "not among the round's pair features")


def trace_events(steps: list[dict]) -> list[TraceEvent]:
    """A stored trace as events a reader follows: the exemplars, the hypotheses, each probe with its measured
    per-token activations, the verdicts and why, refinements, why it stopped, the conclusion and the selection
    among candidates. Prompts and raw replies stay available as `llm` events."""
    out: list[TraceEvent] = []
    hyps: dict[str, str] = {}
    for s in steps:
        kind, c, step = s["kind"], s["content"], s["step"]
        if kind == "exemplars":
            out.append(TraceEvent(kind="exemplars", step=step, data={"text": str(c)}))
        elif kind == "status" and isinstance(c, dict) and "hypothesis" not in c:
            for hid, h in c.items():
                hyps[str(hid)] = h.get("text", "")
            out.append(TraceEvent(kind="hypotheses", step=step, data={"hypotheses": [
                {"id": int(hid), "text": h.get("text", ""), "negative": bool(h.get("negative")),
                 "status": h.get("status")} for hid, h in c.items()]}))
        elif kind == "status" and isinstance(c, dict):
            hid = str(c["hypothesis"])
            if c.get("verdict") == "REFINED" and "text" in c:
                out.append(TraceEvent(kind="refined", step=step, data={
                    "hypothesis": int(hid), "before": hyps.get(hid, ""), "text": c["text"]}))
                hyps[hid] = c["text"]
            else:
                out.append(TraceEvent(kind="verdict", step=step, data={**c, "text": hyps.get(hid, "")}))
        elif kind == "probe":
            out.append(TraceEvent(kind="probe", step=step, data={**c, "text": hyps.get(str(c.get("hypothesis")), "")}))
        elif kind == "reply" and isinstance(c, dict) and c.get("step") == "conclude":
            out.append(TraceEvent(kind="conclusion", step=step, data=c.get("json") or {}))
        elif kind in ("stop", "selection", "error"):
            out.append(TraceEvent(kind=kind, step=step, data=c if isinstance(c, dict) else {"value": c}))
        elif kind in ("prompt", "reply"):
            out.append(TraceEvent(kind="llm", step=step, data={
                "role": kind, "step": c.get("step", "") if isinstance(c, dict) else "",
                "text": c.get("text") if isinstance(c, dict) and "text" in c else json.dumps(
                    c.get("json", c) if isinstance(c, dict) else c, ensure_ascii=False, indent=1)}))
        else:
            out.append(TraceEvent(kind=kind, step=step, data=c if isinstance(c, dict) else {"value": c}))
    return out


def _group_order(kind: str) -> tuple[int, int]:
    if kind == "top":
        return (0, 0)
    if kind.startswith("decile"):
        return (1, -int(kind.split()[1]) if kind.split()[1].lstrip("-").isdigit() else 0)
    return (2, 0 if kind == "hard_negative" else 1)


def _names(spec: str | None) -> list[str]:
    return [m.strip() for m in (spec or "").split(",") if m.strip()]


def _run_of_kind(db: Store, run_id: int, kind: str) -> dict:
    r = db.run(run_id)
    if r["kind"] != kind:
        raise NotFound(f"run {run_id} is a {r['kind']} run, not a{'n' if kind[0] in 'aeiou' else ''} "
                             f"{kind} run")
    return r


def _sample_run(db: Store, cfg: dict, cache_run: int) -> int | None:
    """The sampling run a run read its windows from: same cache, same sampling settings."""
    from saexplain.pipeline.configs import StageConfigs

    try:
        sampling = StageConfigs.from_dict(cfg).sampling
    except SaexplainError:
        return None
    return db.find_run("sample", sampling.hash() + f"-cache{cache_run}")
