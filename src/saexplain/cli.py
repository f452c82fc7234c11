"""`saexplain` command line. Each stage's typed config doubles as its options (see config.config_options)."""

from __future__ import annotations

import functools
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from saexplain.cache.config import CacheConfig
from saexplain.config import config_options
from saexplain.data.contexts import CorpusConfig
from saexplain.distributed.config import RayConfig
from saexplain.errors import SaexplainError
from saexplain.llm.client import LLMConfig
from saexplain.sampling.sampler import SamplingConfig
from saexplain.store import Store
from saexplain.subject.config import SubjectConfig, TrainSAEConfig

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Explain SAE features and test every explanation on the real model.\n\n"
         "Stages: train-sae (the offline default SAE) · probe / lens (the activation oracle) · serve (the web UI) · "
         "cache → features → sample (the data plane) · ask (the LLM layer) · demo.",
)
console = Console()


def friendly_errors(fn):
    """A SaexplainError (bad input, missing file, unknown feature…) is one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaexplainError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def _bar(value: float, top: float, width: int = 20) -> str:
    n = 0 if top <= 0 else round(width * max(value, 0.0) / top)
    return "█" * n


@app.command()
@friendly_errors
@config_options(SubjectConfig)
def probe(text: str = typer.Argument(..., help="text to run through the model + SAE"),
          feature: list[int] = typer.Option(None, "--feature", "-f", help="feature id (repeatable); "
                                            "none: the top features of each token"),
          subject: SubjectConfig = None):
    """Per-token activations of SAE features on TEXT (the activation oracle)."""
    from saexplain.subject.oracle import Oracle

    oracle = Oracle.from_config(subject)
    (res,) = oracle.activations([text], feature or None)
    table = Table(title=f"{subject.sae} @ {oracle.subject.hookpoint.saelens_name}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("token")
    if res.features is not None:
        top = max(float(res.acts.max()) if res.acts.size else 0.0, 1e-9)
        for f in res.features:
            table.add_column(f"f{f}", justify="right")
        table.add_column("")
        for i, tok in enumerate(res.tokens):  # signed: an AbsTopK SAE's negative activations are active too
            row = [f"{v:.2f}" if v != 0 else "·" for v in res.acts[i]]
            table.add_row(str(i), repr(tok)[1:-1], *row, _bar(float(res.acts[i].max()), top))
    else:
        table.add_column("top features (id:activation)")
        for i, tok in enumerate(res.tokens):
            pairs = [f"{int(j)}:{v:.2f}" for v, j in zip(res.acts[i][:6], res.indices[i][:6]) if v != 0]
            table.add_row(str(i), repr(tok)[1:-1], "  ".join(pairs))
    console.print(table)


@app.command()
@friendly_errors
@config_options(SubjectConfig)
def lens(feature: int = typer.Argument(..., help="feature id"), k: int = typer.Option(10, help="tokens each side"),
         subject: SubjectConfig = None):
    """Logit lens of a feature: the tokens its decoder direction promotes and suppresses."""
    from saexplain.subject.oracle import Oracle

    oracle = Oracle.from_config(subject)
    view = oracle.logit_lens(feature, k)
    table = Table(title=f"feature {feature}: logit lens")
    table.add_column("promotes")
    table.add_column("logit", justify="right")
    table.add_column("suppresses")
    table.add_column("logit", justify="right")
    for (t1, v1), (t2, v2) in zip(view.top, view.bottom):
        table.add_row(repr(t1), f"{v1:.2f}", repr(t2), f"{v2:.2f}")
    console.print(table)


@app.command("train-sae")
@friendly_errors
@config_options(TrainSAEConfig)
def train_sae_cmd(force: bool = typer.Option(False, help="retrain even when the output exists"),
                  train: TrainSAEConfig = None):
    """Train a TopK SAE (sae-lens trainer) on the subject's residual stream; saved in SAELens format."""
    from saexplain.subject.train_sae import train_sae

    out = train.output_dir()
    if not force and (out / "sae_weights.safetensors").is_file():
        console.print(f"SAE already trained: {out} (use --force to retrain)")
        return
    path = train_sae(train)
    console.print(f"SAE saved to {path}")


@app.command()
@friendly_errors
@config_options(SubjectConfig, CorpusConfig, CacheConfig, RayConfig)
def cache(store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)"),
          subject: SubjectConfig = None, corpus: CorpusConfig = None, cache: CacheConfig = None,
          ray_cfg: RayConfig = None):
    """Latent cache: run the corpus through model + SAE, keep the sparse activations, compute feature stats
    (--ray: the shards are written by Ray workers; the same cache, byte for byte)."""
    from saexplain.cache.pipeline import build_cache, default_store_path

    with Store(store or default_store_path()) as db, _ray_session(ray_cfg) as ray:
        t0 = time.perf_counter()
        run = build_cache(subject, corpus, cache, db, workers=ray.cache_workers(subject) if ray else None)
        usage = run.cache.storage()
        stats = db.feature_stats(run.run_id)
        dead = sum(r["dead"] for r in stats)
        console.print(f"cache run {run.run_id}: {run.cache.n_contexts} contexts × {run.cache.context} tokens, "
                      f"{usage['nonzeros']:,} non-zeros, {usage['bytes_per_nonzero']:.2f} bytes each, "
                      f"{dead}/{len(stats)} dead features ({time.perf_counter() - t0:.0f}s) → {run.cache.path}")


@app.command()
@friendly_errors
def features(top: int = typer.Option(20, help="rows"), by: str = typer.Option("density", help="density | max"),
             run: int = typer.Option(None, help="cache run id (default: the latest)"),
             store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")):
    """Table of features of a cache run: id, max activation, density, top tokens."""
    from saexplain.cache.pipeline import default_store_path

    with Store(store or default_store_path(), readonly=True) as db:
        run_id = run if run is not None else _latest_run(db, "cache")
        kind = db.run(run_id)["kind"]  # no such run: one error
        if kind != "cache":
            raise SaexplainError(f"run {run_id} is not a cache run (it is a {kind!r} run): features are listed "
                                 f"for cache runs")
        rows = db.feature_stats(run_id, order_by=by, limit=top, alive_only=True)
        if not rows and not db.feature_stats(run_id, limit=1):
            raise SaexplainError(f"cache run {run_id} has no feature statistics yet: run `saexplain cache` again "
                                 f"to finish it")
    table = Table(title=f"cache run {run_id}: top {top} features by {by}")
    for col, just in (("id", "right"), ("max", "right"), ("density", "right"), ("top tokens", "left")):
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(str(r["feature"]), f"{r['max_act']:.2f}", f"{r['frequency']:.2e}",
                      "  ".join(repr(t) for t in r["top_tokens"]))
    console.print(table)


@app.command()
@friendly_errors
@config_options(SamplingConfig)
def sample(feature: list[int] = typer.Option(..., "--feature", "-f", help="feature id (repeatable)"),
           run: int = typer.Option(None, help="cache run id (default: the latest)"),
           show: int = typer.Option(5, help="examples shown per pool"),
           store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)"),
           sampling: SamplingConfig = None):
    """Draw each feature's explain and score pools (disjoint contexts) from a cache run and store them."""
    from saexplain.cache.pipeline import default_store_path, open_cache_run
    from saexplain.sampling.pipeline import sample_features

    with Store(store or default_store_path()) as db:
        cache_run = open_cache_run(db, run if run is not None else _latest_run(db, "cache"))
        run_id, examples = sample_features(cache_run, feature, sampling, db)
    console.print(f"sample run {run_id}")
    _print_examples(cache_run, examples, show)


@app.command()
@friendly_errors
@config_options(LLMConfig)
def ask(prompt: str = typer.Argument(..., help="a question for the configured LLM"),
        max_tokens: int = typer.Option(128, help="longest reply"),
        store: Path = typer.Option(None, help="SQLite store for the request cache (default: $SAEXPLAIN_HOME/saexplain.db)"),
        llm: LLMConfig = None):
    """Send one prompt through the LLM layer (cache, retries, accounting) — a check of an --llm setting."""
    import asyncio

    from saexplain.cache.pipeline import default_store_path
    from saexplain.llm import LLM

    with Store(store or default_store_path()) as db:
        client = LLM(llm, store=db)
        if client.chat:
            comp = asyncio.run(client.generate([("user", prompt)], max_tokens=max_tokens))
        else:
            comp = asyncio.run(client.generate(prompt=prompt, max_tokens=max_tokens))
    console.print(comp.text)
    u = client.usage
    console.print(f"[dim]{client.backend.name}:{client.backend.model} · {u.tokens_in} tokens in, {u.tokens_out} out, "
                  f"{u.seconds:.1f}s{' · from cache' if comp.cached else ''}[/dim]")


def _stage_classes():
    from saexplain.pipeline.configs import RunConfig, StageConfigs

    return (RunConfig, *StageConfigs.CLASSES.values())


@contextmanager
def _ray_session(cfg: RayConfig):
    """A RaySession for the command when --ray was given, else None."""
    if not cfg.enabled:
        yield None
        return
    from saexplain.distributed import RaySession

    with RaySession(cfg, echo=lambda m: console.print(m, markup=False, highlight=False)) as session:
        yield session


@app.command()
@friendly_errors
@config_options(*_stage_classes(), RayConfig)
def run(run=None, subject=None, corpus=None, cache=None, sampling=None, llm=None, oneshot=None, sage=None,
        detection=None, fuzzing=None, simulation=None, embedding=None, generation=None, contrast=None,
        steering=None, saeexplainer=None, ray_cfg=None):
    """Cache → sample → explain → score → report, resumable per feature (the same command continues a
    killed run; more features, explainers or scorers extend it). --ray: cache and items on Ray workers, the
    store written by this process alone."""
    from saexplain.pipeline.configs import StageConfigs

    cfgs = StageConfigs(run, subject, corpus, cache, sampling, llm, oneshot, sage, detection, fuzzing, simulation,
                        embedding, generation, contrast, steering, saeexplainer)
    with _ray_session(ray_cfg) as ray:
        h = run_all_and_print(cfgs, ray)
    console.print(f"[bold]run {h.run_id}[/bold]: report in {h.folder}")
    _exit_on_failures(h.counts)


def _exit_on_failures(counts: dict[str, dict[str, int]]) -> None:
    """Exit 1 (scripts and CI notice) when an item failed or was degraded; rerunning the command retries them."""
    bad = {stage: (c.get("failed", 0), c.get("degraded", 0)) for stage, c in counts.items()}
    if any(f or d for f, d in bad.values()):
        parts = ", ".join(f"{stage}: {f} failed, {d} degraded" for stage, (f, d) in bad.items())
        print(f"incomplete: {parts} (run the same command again to retry them)", file=sys.stderr)
        raise typer.Exit(1)


def run_all_and_print(cfgs, ray=None):
    from saexplain.pipeline.runner import run_all

    return run_all(cfgs, echo=lambda m: console.print(m, markup=False, highlight=False), ray=ray)


@app.command()
@friendly_errors
def score(run_id: int = typer.Option(None, "--run", help="run id (default: the latest run)"),
          scorers: str = typer.Option(None, help="comma-separated scorers (default: the run's)"),
          feature: list[int] = typer.Option(None, "--feature", help="with --text: the feature a hand-written "
                                            "explanation is for (repeatable, paired with --text)"),
          text: list[str] = typer.Option(None, "--text", help="a hand-written explanation of --feature, scored on "
                                         "the same windows and judge as the run's explainers"),
          texts: Path = typer.Option(None, help="a file of hand-written explanations: JSON lines "
                                     '{"feature": N, "text": "...", "method": "..."} or "N<TAB>text" lines'),
          method: str = typer.Option("human", help="the method name hand-written explanations are stored and "
                                     "reported under (e.g. truth, human)"),
          store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")):
    """Score every explanation of a run (resumable per explanation and scorer), then rewrite its report.
    --feature/--text or --texts add hand-written explanations to the run first (as their own method)."""
    import asyncio

    from saexplain.cache.pipeline import default_store_path
    from saexplain.llm import LLM
    from saexplain.pipeline.runner import RunLease, open_run, run_concurrency, score_stage
    from saexplain.report import write_report
    from saexplain.score import SCORERS

    names = [x.strip() for x in scorers.split(",")] if scorers else None
    for n in names or []:
        SCORERS.get(n)
    from saexplain.pipeline.handwritten import put_hand_written, read_hand_written

    written = read_hand_written(feature or [], text or [], texts, method)
    echo = lambda m: console.print(m, markup=False, highlight=False)
    with Store(store or default_store_path()) as db:
        run_id = run_id or _latest_run(db, "run")
        with RunLease(db, run_id):
            if written:
                added = put_hand_written(db, run_id, written)
                echo(f"hand-written explanations: {added} added, {len(written) - added} already stored")
            h, oracle = open_run(db, run_id, echo=echo)
            llm = LLM(h.configs.llm, store=db, run_id=run_id)
            only = sorted({f for f, _, _ in written}) if written else None

            async def go():
                c = await score_stage(h, db, llm, oracle, names, echo, features=only,
                                      concurrency=run_concurrency(h.configs.run, llm))
                await llm.aclose()
                return c

            c = asyncio.run(go())
        echo(f"score: {c['done']} new, {c['skipped']} already done, {c['degraded']} degraded, {c['failed']} failed")
        paths = write_report(db, run_id, h.folder)
    console.print(f"report: {paths['markdown']}")
    _exit_on_failures({"score": c})


@app.command()
@friendly_errors
def report(run_id: int = typer.Option(None, "--run", help="run id (default: the latest run)"),
           baseline: str = typer.Option(None, help="method the others are compared with (default: oneshot)"),
           out: Path = typer.Option(None, help="folder (default: $SAEXPLAIN_HOME/runs/<run>)"),
           include_degraded: bool = typer.Option(False, help="average degraded scores that have a value too"),
           store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")):
    """Method × scorer table with bootstrap 95 % CIs (markdown, JSON, PNG), rebuilt from the store alone."""
    from saexplain.cache.pipeline import default_store_path
    from saexplain.pipeline.runner import run_folder
    from saexplain.report import write_report

    with Store(store or default_store_path(), readonly=True) as db:
        run_id = run_id or _latest_run(db, "run")
        if db.run(run_id)["kind"] != "run":
            raise SaexplainError(f"run {run_id} is not an explain/score run")
        paths = write_report(db, run_id, out or run_folder(run_id, db.path), baseline, include_degraded)
    console.print(paths["markdown"].read_text(), markup=False, highlight=False)
    console.print(f"written: {paths['markdown']}  {paths['json']}  {paths['png']}")


@app.command()
@friendly_errors
def trace(feature: int = typer.Option(..., help="feature id"),
          run_id: int = typer.Option(None, "--run", help="run id (default: the latest run)"),
          method: str = typer.Option("sage", help="explainer"),
          store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")):
    """Print an explainer's whole trace for one feature: prompts, replies, probes with per-token
    activations, status changes, why it stopped."""
    from saexplain.cache.pipeline import default_store_path
    from saexplain.pipeline.trace import format_trace

    with Store(store or default_store_path(), readonly=True) as db:
        run_id = run_id or _latest_run(db, "run")
        steps = db.trace(run_id, feature, method)
        exp = db.explanations(run_id, feature=feature, method=method)
        if not exp:
            raise SaexplainError(f"run {run_id} has no {method} explanation of feature {feature}")
    print(format_trace(steps, exp[0]))


train_app = typer.Typer(no_args_is_help=True, help="SAEExplainer: SFT warm-up, preference pairs from activation "
                        "rewards, DPO rounds (TRL + PEFT). Evaluate with `saexplain run --explainers "
                        "saeexplainer@sft,saeexplainer@round2 --saex-train-dir DIR` on held-out features.")
app.add_typer(train_app, name="train")


def _training_classes():
    from saexplain.explain.saeexplainer import SAEExplainerConfig
    from saexplain.train.config import TrainConfig

    return (TrainConfig, SubjectConfig, CorpusConfig, CacheConfig, SamplingConfig, LLMConfig, SAEExplainerConfig)


_CONFIG_FILE = typer.Option(None, "--config", help="a training folder's config.json (or a file like it): its "
                            "settings instead of the options")


def _training(config_file, training, subject, corpus, cache, sampling, llm, saeexplainer):
    import json

    from saexplain.errors import ConfigError
    from saexplain.pipeline.runner import RunConfig, StageConfigs
    from saexplain.train.pipeline import Training

    given = {"training": training, "subject": subject, "corpus": corpus, "cache": cache, "sampling": sampling,
             "llm": llm, "saeexplainer": saeexplainer}
    if config_file is not None:
        changed = [k for k, v in given.items() if v != type(v)()]
        if changed:
            raise ConfigError(f"give either --config or options, not both ({changed[0]} options were given)")
        try:
            data = json.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_file}: not JSON ({e})") from None
        given = {k: type(v).build(**data.get(k, {})) for k, v in given.items()}
    training = given["training"]
    stages = StageConfigs(RunConfig(explainers="", scorers="", store=training.store), given["subject"],
                          given["corpus"], given["cache"], given["sampling"], given["llm"],
                          saeexplainer=given["saeexplainer"])
    return Training(training, stages, echo=lambda m: console.print(m, markup=False, highlight=False))


@train_app.command("sft")
@friendly_errors
@config_options(*_training_classes())
def train_sft_cmd(config_file: Path = _CONFIG_FILE, training=None, subject=None, corpus=None, cache=None,
                  sampling=None, llm=None, saeexplainer=None):
    """SFT warm-up on reference explanations (best-scoring ones of --reference-run, or a Neuronpedia export)."""
    t = _training(config_file, training, subject, corpus, cache, sampling, llm, saeexplainer)
    try:
        t.sft()
    finally:
        t.close()


@train_app.command("pairs")
@friendly_errors
@config_options(*_training_classes())
def train_pairs_cmd(round_: int = typer.Option(1, "--round", min=1, max=2, help="1: candidates of the SFT model; "
                                               "2: of the round-1 model"),
                    config_file: Path = _CONFIG_FILE, training=None, subject=None, corpus=None, cache=None, sampling=None, llm=None,
                    saeexplainer=None):
    """Candidates (6 per feature, T 0.9) → rewards (LLM texts measured by the oracle) → preference pairs."""
    from saexplain.llm import LLM

    t = _training(config_file, training, subject, corpus, cache, sampling, llm, saeexplainer)
    try:
        client = LLM(llm, store=t.store)
        t.pairs(round_, client)
    finally:
        t.close()


@train_app.command("dpo")
@friendly_errors
@config_options(*_training_classes())
def train_dpo_cmd(round_: int = typer.Option(1, "--round", min=1, max=2, help="DPO round (needs its pairs)"),
                  config_file: Path = _CONFIG_FILE, training=None, subject=None, corpus=None, cache=None, sampling=None, llm=None, saeexplainer=None):
    """One DPO round (TRL DPOTrainer + a LoRA adapter; reference = the previous stage). Resumes from its last
    checkpoint. With --dpo-check reward, the LLM writes the check features' reward texts after each epoch."""
    from saexplain.llm import LLM

    t = _training(config_file, training, subject, corpus, cache, sampling, llm, saeexplainer)
    try:
        t.dpo(round_, lambda: LLM(t.stages.llm, store=t.store))
    finally:
        t.close()


@app.command()
@friendly_errors
def serve(store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)"),
          host: str = typer.Option("127.0.0.1", help="address to bind (the default is this machine only)"),
          port: int = typer.Option(8000, min=1, max=65535, help="port"),
          probe: bool = typer.Option(True, help="load the subject model for the live probe and the logit lens"),
          device: str = typer.Option("cpu", help="torch device of the live probe")):
    """The web UI: runs, feature pages, SAGE traces, live probe, search and export (read-only on the store)."""
    import uvicorn

    from saexplain.cache.pipeline import default_store_path
    from saexplain.web.app import create_app

    app_ = create_app(store or default_store_path(), probe=probe, device=device)
    console.print(f"saexplain UI on http://{host}:{port}/  (store {store or default_store_path()}; Ctrl-C stops it)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
@friendly_errors
def export(run_id: int = typer.Option(None, "--run", help="run id (default: the latest run)"),
           fmt: str = typer.Option(..., "--format", help="neuronpedia | delphi"),
           out: Path = typer.Option(None, help="folder to write into (default: the run's folder /export-<format>)"),
           model_id: str = typer.Option(None, help="Neuronpedia modelId (default: from the subject model)"),
           sae_id: str = typer.Option(None, help="Neuronpedia SAE id (`layer`) / delphi module name (default: "
                                                  "from the hookpoint)"),
           store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")):
    """A run's ok explanations and scores in Neuronpedia's or delphi's file formats."""
    from saexplain.cache.pipeline import default_store_path
    from saexplain.export import ExportOptions, export_files, formats, write_export
    from saexplain.pipeline.runner import run_folder

    known = formats()
    if fmt not in known:  # the arguments are checked before the store is opened
        raise SaexplainError(f"unknown export format {fmt!r} (known: {', '.join(known)})")
    with Store(store or default_store_path(), readonly=True) as db:
        run_id = run_id or _latest_run(db, "run")
        files = export_files(db, run_id, fmt, ExportOptions(model_id, sae_id))
        folder = out or run_folder(run_id, db.path) / f"export-{fmt}"
    written = write_export(files, folder)
    console.print(f"{len(written)} file(s) written under {folder}")


@app.command()
@friendly_errors
def snapshot(action: str = typer.Argument(..., help="save | restore"),
             to: Path = typer.Option(None, help="the snapshot file (default: $SAEXPLAIN_HOME/snapshots/"
                                                "<store name>.gz; required with --folder)"),
             store: Path = typer.Option(None, help="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)"),
             folder: Path = typer.Option(None, help="carry this folder (tar.gz) instead of a store"),
             force: bool = typer.Option(False, help="restore over an existing store or folder"),
             exclude: list[str] = typer.Option([], help="with --folder save: leave out files of this name or this "
                                                        "path inside the folder (repeatable), e.g. checkpoint.pt")):
    """Carry a store (the LLM request cache included) or a training folder to another machine as one file;
    `save` is safe while a run writes, `restore` never overwrites without --force and refuses a damaged file."""
    from saexplain.cache.pipeline import default_store_path
    from saexplain.paths import home
    from saexplain.store import snapshot as snap

    if action not in ("save", "restore"):
        raise SaexplainError(f"snapshot: unknown action {action!r} (save | restore)")
    if folder is not None:
        if to is None:
            raise SaexplainError("snapshot --folder: give --to too (the snapshot file, e.g. folder.tar.gz)")
        if action == "save":
            console.print(f"snapshot: {to} {snap.save_folder(folder, to, tuple(exclude))} bytes")
        else:
            console.print(f"snapshot: {to} restored to {folder} ({snap.restore_folder(folder, to, force)} bytes)")
        return
    store = Path(store or default_store_path())
    to = to or home() / "snapshots" / f"{store.name}.gz"
    if action == "save":
        console.print(f"snapshot: {to} {snap.save(store, to)} bytes")
    else:
        console.print(f"snapshot: {to} restored to {store} ({snap.restore(store, to, force)} bytes)")


def _latest_run(db: Store, kind: str) -> int:
    runs = db.runs(kind)
    if not runs:
        raise SaexplainError(f"no {kind} run in {db.path}: run `saexplain {kind}` first")
    return int(runs[-1]["id"])


@app.command()
@friendly_errors
def demo(features: int = typer.Option(4, help="features to explain (random, density 0.01 %–1 %)"),
         tokens: int = typer.Option(262_144, help="tokens of the default corpus to cache"),
         explainers: str = typer.Option("oneshot,sage", help="explainers, comma-separated"),
         scorers: str = typer.Option("generation,detection,embedding",
                                     help="scorers, comma-separated (simulation is available, and the slowest)"),
         seed: int = typer.Option(0, help="which features"),
         serve: bool = typer.Option(True, help="serve the web UI while the demo runs (results appear as they "
                                               "finish)"),
         stay: bool = typer.Option(True, help="keep serving the UI after the demo (Ctrl-C stops it)"),
         port: int = typer.Option(8000, min=1, max=65535, help="the UI's port (another free one when taken)")):
    """The offline default end to end: Gemma 3 270M + its TopK SAE (shipped with saexplain) → latent cache →
    features → explain (one-shot and SAGE, modest budgets) → score → report, with the default LLM, shown in the
    web UI on 127.0.0.1 as results land."""
    from contextlib import nullcontext

    from saexplain.cache.pipeline import default_store_path
    from saexplain.pipeline.presets import cpu_preset
    from saexplain.subject.sae import default_sae_dir
    from saexplain.subject.train_sae import train_sae
    from saexplain.web.launch import ServerProcess

    t0 = time.perf_counter()
    if not (default_sae_dir() / "sae_weights.safetensors").is_file():  # installs the shipped SAE when present
        console.print("[bold]No default SAE shipped with this install: training it (`saexplain train-sae`)…[/bold]")
        train_sae(TrainSAEConfig())
        console.print(f"SAE trained ({time.perf_counter() - t0:.0f}s)")
    cfgs = cpu_preset(f"random:{features}", explainers, scorers, tokens, seed)
    store_path = Path(cfgs.run.store or default_store_path())
    if serve:
        Store(store_path).close()  # the UI reads the store: make sure it exists before the first run
    with ServerProcess(store_path, port, wait=False) if serve else nullcontext() as server:
        if server is not None:
            console.print(f"[bold]web UI: {server.url}/[/bold] (results appear there as they finish)")
        h = run_all_and_print(cfgs)
        console.print(f"\n[bold]demo finished in {time.perf_counter() - t0:.0f}s[/bold] · run {h.run_id}\n"
                      f"report: {h.folder / 'report.md'}\nplot:   {h.folder / 'report.png'}\n"
                      f"a SAGE trace: saexplain trace --run {h.run_id} --feature {next(iter(h.records))}")
        if server is not None and stay:
            console.print(f"[bold]the web UI keeps serving: {server.url}/runs/{h.run_id}[/bold] — Ctrl-C stops it")
            server.serve_until_interrupted()
    _exit_on_failures(h.counts)


def _print_examples(run, examples: dict, show: int) -> None:
    for f, exs in examples.items():
        console.print(f"\n[bold]feature {f}[/bold]: explain and score pools (disjoint contexts)")
        for pool in ("explain", "score"):
            kinds: dict[str, int] = {}
            for e in exs:
                if e.pool == pool:
                    kinds[e.kind] = kinds.get(e.kind, 0) + 1
            console.print(f"  {pool}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
            for e in [e for e in exs if e.pool == pool and e.kind == "top"][:show]:
                strings, _ = run.contexts.window(e.context, e.start, e.end)
                console.print(f"    {e.max_act:6.2f}  " + "".join(
                    f"[reverse]{t}[/reverse]" if a > 0 else t for t, a in zip(strings, e.acts)).replace("\n", " "))


def optional_ray_address(argv: list[str]) -> list[str]:
    """`--ray` with no address (last, or followed by another option) means a Ray started for the command."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--ray" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i + 1:i + 1] = ["local"]
            break
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app(args=optional_ray_address(sys.argv[1:]))


if __name__ == "__main__":
    main()
