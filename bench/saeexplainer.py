"""SAEExplainer at CPU scale on the default stack: SFT → pairs → DPO round 1 → pairs → DPO round 2, then the
evaluation on held-out features against one-shot, every method judged by the same LLM.

    .venv/bin/python -m bench saeexplainer [--train-features 1024] [--sft-epochs 3]
    # another training folder's stages on the same held-out features, in a run of their own:
    .venv/bin/python -m bench saeexplainer --eval-only --dir FOLDER --eval-stages sft,round1 --eval-name NAME

- Held-out features: those of bench/explainers.py's run (same store $SAEXPLAIN_HOME/bench.db, same preset, so
  its one-shot explanations are reused and judged by the same LLM on the same score pools; SAGE is not explained
  again here: its comparison is bench/explainers.py's, and SAGE v7 would remake that run's v6 rows). The
  training features are drawn from the same density band minus those.
- SFT references (`--references`): `top-tokens` (default: each training feature's most frequent peak tokens,
  counted — no LLM, so the warm-up covers `--train-features` features, 1,024 by default) or `oneshot` (one-shot
  explanations of the training features in a run named `saeexplainer-train`, scored by generation: the
  best-scoring one per feature; the recipe of the first runs, 64 features).
- DPO rounds on `--pair-features` of them (seeded; 32 by default): `--candidates` per feature (12), each rewarded
  with `--reward-repeats` sets of texts (2; pairs only beyond the measured reward noise), up to
  `--pairs-per-feature` pairs from each feature's candidates (1), `--dpo-preset` (lora:
  up to 4 epochs — `--dpo-epochs` to change —, 20 % of the pairs held out, the best epoch kept; `paper` =
  SAEExplainer's settings; `--dpo-check reward`: the best epoch is picked by the greedy explanations of 16
  training features outside the pair features, rewarded after each epoch (`--dpo-check-features`) — ≈ 70 s per check here —, and
  `--dpo-holdout 0` trains on every pair; `--dpo-features unseen` draws the pair and check features from the
  density band outside the split — features SFT never saw, as the held-out ones are — instead of the training
  features). Cost on
  this machine: one reward call (the LLM writes `--reward-texts` sentences) takes ≈ 17 s, so a round costs up to
  pair features × candidates × repeats calls — 32 × 12 × 2 ≈ 3.6 h, less for repeated candidates (rewarded once;
  round 1 measured 7,739 s);
  SFT on 1,024 features × 3 epochs is 768 steps of 4 (≈ 4 s each, ≈ 50 min). `--stop-after sft` then
  `--stop-after round1` then no option: each call resumes and evaluates the stages trained so far.
- `--reward-source corpus`: no LLM call for rewards — each candidate's quoted words are looked up in the
  feature's explain-pool contexts of the latent cache, the reward the mean share of their occurrences where the
  feature reaches half its max (exact, so one set: `--reward-repeats 1`, pairs by `min_margin`); a round then
  costs the candidates' generation only, so `--pair-features` can be hundreds.
- `--reward-source share`: the LLM reward's texts, measured as generation counts them — the share of a
  candidate's texts on which the feature reaches half its max (the LLM reward takes the highest activation, so a
  list with one right word earns it in full). `--reuse` of an LLM-reward folder copies its candidates and
  measures their stored texts again (the oracle only, no LLM call).
- `--reward-source generation`: the generation scorer itself rewards each candidate — its prompt writes
  `--reward-texts` sentences (greedy, as the evaluation writes them; default the CPU preset's generation count,
  8, which the evaluation below uses), the reward the share reaching half the feature's max: a candidate's reward
  is the score the evaluation would give it, so DPO optimises the goal's metric (on training features; the
  held-out ones stay unseen). One reward call writes those sentences (≈ 10 s for 10 on this machine).
- Training folder: $SAEXPLAIN_HOME/saeexplainer/bench (`--dir` another; `--reuse FOLDER` copies FOLDER's SFT model
  and round-1 candidates into it, for other pair rules, DPO settings or more pair features on the same
  candidates; only the SFT model when the candidates or their reward differ, e.g. `--reward-source corpus`; its round 1
  and round 2's candidates too when only round-2 settings differ, e.g. `--greedy-rounds 2`: the round-1 model's
  greedy explanation of each pair feature joins round 2's candidates and takes its first pair). Every stage resumes (store, SFT checkpoint, candidates file, TRL checkpoints), so a killed
  benchmark continues where it stopped.
Prints the wall time of each stage, the evaluation table (generation, contrast, detection) and the headline
`round2 - SFT GEN delta: <points> [<lo>, <hi>]` (points = generation accuracy × 100); raw:
bench/results/saeexplainer/heldout-<eval name>.json.

The same trained stages on unseen features (band features neither trained on nor held out, 144 by default in
the study), each explanation rewarded by the generation scorer itself, paired against SFT:

    .venv/bin/python -m bench saeexplainer unseen-check --check-dir FOLDER --check-features 144 \\
        --generation-reward --model FOLDER:STAGE[:RAW_JSON] [--model ...] [--tag TAG]

(raw: bench/results/saeexplainer/unseen-<tag>.json). `python -m bench saeexplainer --report` prints the study's
table — per trained stage: reward, pair features, held-out and unseen generation − SFT with their 95 % CIs —
from the committed raw files under bench/results/saeexplainer/, running nothing."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

from bench.common import RESULTS, record
from saexplain.explain.saeexplainer import STAGES as EXPLAINER_STAGES
from saexplain.explain.saeexplainer import ExplainerLM, SAEExplainerConfig
from saexplain.llm import LLM
from saexplain.paths import home
from saexplain.pipeline.presets import cpu_preset
from saexplain.pipeline.runner import run_all
from saexplain.report import bootstrap_ci, markdown, summarize
from saexplain.store import Store
from saexplain.train.config import TrainConfig
from saexplain.train.pipeline import Training

STAGES = ("sft", "round1", "round2")


def echo(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    if sys.argv[1:2] == ["unseen-check"]:
        return unseen_check(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-features", type=int, default=1024)
    ap.add_argument("--references", choices=("top-tokens", "oneshot"), default="top-tokens")
    ap.add_argument("--pair-features", type=int, default=32)
    ap.add_argument("--reward-source", choices=("llm", "share", "generation", "corpus"), default="llm",
                    help="llm: the LLM writes texts from each candidate, the oracle measures them (the highest "
                    "activation); share: the same texts, the share of them reaching half the feature's max "
                    "(generation's count); generation: the generation scorer itself (its prompt; with "
                    "the evaluation's --reward-texts, the evaluation's score of the candidate); corpus: no LLM "
                    "call, the candidate's quoted words looked up in the latent cache (cheap: more pair features)")
    ap.add_argument("--reward-repeats", type=int, default=None, help="sets of reward texts per candidate "
                    "(default 2 with --reward-source llm or share; 1 with generation, greedy as the evaluation "
                    "writes; the corpus reward is exact: 1)")
    ap.add_argument("--pairs-per-feature", type=int, default=1)
    ap.add_argument("--greedy-rounds", default="", help="rounds whose candidates include the policy's greedy "
                    "explanation, which takes each feature's first pair ('2': round 2 only; with --reuse of a "
                    "folder whose round 1 this folder shares, its round 1 and round 2's candidates are copied)")
    ap.add_argument("--reuse", default=None, metavar="FOLDER", help="copy FOLDER's SFT model and round-1 "
                    "candidates into --dir first (FOLDER must agree on every setting but the pair rules, DPO's and "
                    "--pair-features)")
    ap.add_argument("--dpo-preset", choices=("lora", "paper"), default="lora")
    ap.add_argument("--dpo-check", choices=("margin", "reward"), default="margin",
                    help="what picks DPO's best epoch: the held-out pairs' margin, or the greedy explanations of "
                    "16 training features outside the pair features rewarded after each epoch (the LLM reward "
                    "texts: ≈ 17 s per feature)")
    ap.add_argument("--dpo-check-features", type=int, default=16,
                    help="with --dpo-check reward: training features outside the pair features rewarded each epoch")
    ap.add_argument("--dpo-features", choices=("sft", "unseen"), default="sft",
                    help="where the rounds' pair and check features come from: training features (sft) or band "
                    "features outside the split, new to the explainer as the held-out ones are (unseen)")
    ap.add_argument("--dpo-holdout", type=float, default=None,
                    help="share of the pairs' features held out of DPO (default: the preset's; 0 with "
                    "--dpo-check reward trains on every pair)")
    ap.add_argument("--dpo-patience", type=int, default=1, help="epochs without a better check before stopping")
    ap.add_argument("--dpo-epochs", type=int, default=None,
                    help="DPO's most epochs per round (default: the preset's; the best held-out epoch is kept)")
    ap.add_argument("--tokens", default="262144")
    ap.add_argument("--sft-epochs", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--reward-texts", type=int, default=None, help="texts (sentences) per reward call (default 4; "
                    "with --reward-source generation the CPU preset's generation sentences, as the evaluation)")
    ap.add_argument("--dir", default=None, help="training folder (default: $SAEXPLAIN_HOME/saeexplainer/bench)")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--stop-after", choices=("sft", "round1"), default=None,
                    help="train up to this stage, then evaluate only the stages trained (a session-sized step; "
                    "the next call resumes from the folder)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the folder's trained stages, train nothing")
    ap.add_argument("--eval-stages", default=",".join(STAGES), help="stages to evaluate, e.g. sft,round1")
    ap.add_argument("--eval-name", default="", help="evaluate in a run of this name (its own identity): only the "
                    "SAEExplainer stages, one-shot is not explained again (default: the held-out run)")
    args = ap.parse_args()
    store = str(home() / "bench.db")
    times: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t
        echo(f"== {name}: {time.perf_counter() - t:.0f}s")
        return out

    wanted = {x.strip() for x in args.eval_stages.split(",") if x.strip()}
    if wanted - set(STAGES) or "sft" not in wanted:
        raise SystemExit(f"--eval-stages: sft plus any of {', '.join(STAGES[1:])} (got {args.eval_stages!r})")
    stages_ev = [s for s in STAGES if s in wanted]  # round2 last: its delta is the headline, the last line
    if args.dir and not args.eval_name and not args.skip_eval:  # the held-out run's saeexplainer@ rows are one
        raise SystemExit("--dir: give --eval-name too (evaluating another folder in the held-out run would "
                         "replace the default folder's saeexplainer@ explanations there)")
    with Store(store) as db:  # the held-out run: bench/explainers.py's (unnamed) run in the same store
        runs = [(r["id"], json.loads(r["config_json"])) for r in db.runs("run")
                if not json.loads(r["config_json"]).get("run", {}).get("name")]
    if not runs:
        raise SystemExit(f"no bench/explainers.py run in {store}: run it first (its features are held out)")
    heldout_id, heldout_features = runs[-1][0], runs[-1][1]["features"]  # evaluated on exactly these
    tdir = args.dir or str(home() / "saeexplainer" / "bench")
    cfg = TrainConfig(dir=tdir, store=store, features=f"random:{args.train_features}", heldout_runs=str(heldout_id),
                      sft_epochs=args.sft_epochs, candidates=args.candidates,
                      reward_texts=args.reward_texts or (cpu_preset("", "", "", args.tokens).generation.sentences
                                                         if args.reward_source == "generation" else 4),
                      references=args.references if args.references == "top-tokens" else "store",
                      pair_features=args.pair_features, reward_source=args.reward_source,
                      reward_repeats=args.reward_repeats or (
                          1 if args.reward_source in ("corpus", "generation") else 2),
                      pairs_per_feature=args.pairs_per_feature, greedy_rounds=args.greedy_rounds,
                      dpo_preset=args.dpo_preset, dpo_epochs=args.dpo_epochs, dpo_check=args.dpo_check,
                      dpo_check_features=args.dpo_check_features, dpo_features=args.dpo_features,
                      dpo_holdout=args.dpo_holdout, dpo_patience=args.dpo_patience)
    stages = cpu_preset("", "", "", args.tokens, store=store)
    if args.eval_only:
        return evaluate(args, store, tdir, stages_ev, heldout_features, timed, times)
    t = timed("split", lambda: Training(cfg, stages, echo=echo))
    if args.reuse:
        t.reuse(args.reuse)
    if args.references == "oneshot":
        t.close()
        ref = timed("references (one-shot + generation on training features)", lambda: run_all(cpu_preset(
            ",".join(map(str, t.features)), "oneshot", "generation", args.tokens, store=store,
            name="saeexplainer-train"), echo=echo))
        t = Training(cfg.model_copy(update={"reference_run": ref.run_id}), stages, echo=echo)
    rounds = {None: (1, 2), "round1": (1,), "sft": ()}[args.stop_after]
    try:
        timed("sft", t.sft)
        for r in rounds:
            timed(f"pairs round {r}", lambda r=r: t.pairs(r, LLM(stages.llm, store=t.store)))
            timed(f"dpo round {r}", lambda r=r: t.dpo(r, lambda: LLM(stages.llm, store=t.store)))
    finally:
        t.close()
    if args.stop_after:
        stages_ev = [s for s in stages_ev if STAGES.index(s) <= STAGES.index(args.stop_after)]
    for k, v in times.items():
        print(f"| {k} | {v:.0f} s |")
    if not args.skip_eval:
        evaluate(args, store, tdir, stages_ev, heldout_features, timed, times)


_FUNCTION_WORDS = (
    "a an the and or but nor of to in on at by for with from as into onto over under about than then that this these "
    "those it its is are was were be been being do does did have has had not no so if i you he she we they me him her "
    "us them my your his our their who whom which what when where why how there here all any some each")
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())


def text_forms(summary: dict, methods: list[str]) -> dict[str, dict[str, int]]:
    """What the trained explainer's texts are, counted per stage over the held-out features: token lists
    ('the tokens "a", "b"'), lists that repeat a quoted token, lists of function words only, and (for the DPO
    rounds) texts that differ from SFT's on the same feature — the check that a round changed the greedy text."""
    def ok_texts(m: str) -> dict[str, str]:
        return {f: row[m]["description"] for f, row in summary["features"].items()
                if m in row and row[m]["status"] == "ok"}

    out, sft = {}, ok_texts("saeexplainer@sft")
    for m in methods:
        texts = ok_texts(m)
        quoted = {f: re.findall(r'"([^"]*)"', t) for f, t in texts.items()}
        lists = {f: q for f, q in quoted.items() if q}
        out[m] = {"explanations": len(texts), "token_lists": len(lists),
                  "repeated_token": sum(len(set(q)) < len(q) for q in lists.values()),
                  "function_words_only": sum(all(w.strip().lower() in FUNCTION_WORDS for w in q)
                                             for q in lists.values())}
        if m != "saeexplainer@sft":
            out[m]["differs_from_sft"] = sum(texts[f] != sft[f] for f in texts if f in sft)
            out[m]["compared_with_sft"] = sum(f in sft for f in texts)
    return out


def evaluate(args, store: str, tdir: str, stages: list[str], features: list[int], timed, times) -> None:
    """The stages (and, in the held-out run, one-shot) on the held-out run's features; paired deltas vs
    SFT. The feature list is the run's own (its identity leaves the list out, so this is the same run)."""
    methods = [f"saeexplainer@{s}" for s in stages]
    ev = cpu_preset(",".join(map(str, features)), ",".join(methods if args.eval_name else
                                                           ["oneshot", *methods]),
                    "generation,contrast,detection", args.tokens, store=store,
                    name=args.eval_name, saeexplainer=SAEExplainerConfig(train_dir=tdir))
    h = timed("evaluation", lambda: run_all(ev, echo=echo))
    with Store(store, readonly=True) as db:
        s = summarize(db, h.run_id, baseline="saeexplainer@sft")
        vs_oneshot = None if args.eval_name else summarize(db, h.run_id, baseline="oneshot")
    print(markdown(s))
    sft_vs = vs_oneshot["paired"].get("saeexplainer@sft|generation") if vs_oneshot else None
    forms = text_forms(s, methods)
    record(f"saeexplainer/heldout-{args.eval_name or 'saeexplainer'}",
           {**{f"{stage}_minus_sft_gen": s["paired"].get(f"saeexplainer@{stage}|generation") for stage in stages[1:]},
            "sft_minus_oneshot_gen": sft_vs, "cost": {m: s["usage"].get(m) for m in ("oneshot", *methods)},
            "stage_seconds": dict(times), "text_forms": forms}, s)
    for m, c in forms.items():
        print(f"text forms: {m}: {c['token_lists']} of {c['explanations']} token lists, {c['repeated_token']} "
              f"repeat a quoted token, {c['function_words_only']} function words only"
              + (f", {c['differs_from_sft']} of {c['compared_with_sft']} differ from SFT's text"
                 if "differs_from_sft" in c else ""))
    for m in ("oneshot", *methods):
        u = s["usage"].get(m)
        if u:
            print(f"cost per explanation: {m}: {u['seconds']:.2f} s, {u['llm_calls']:.1f} LLM calls, "
                  f"{u['tokens']:.0f} tokens")
    if sft_vs and sft_vs["n"]:
        print(f"SFT - one-shot GEN delta: {100 * sft_vs['delta']:+.1f} [{100 * sft_vs['ci95'][0]:+.1f}, "
              f"{100 * sft_vs['ci95'][1]:+.1f}] points (n={sft_vs['n']} held-out features)")
    for stage in stages[1:]:
        d = s["paired"].get(f"saeexplainer@{stage}|generation")
        if d and d["n"]:
            print(f"{stage} - SFT GEN delta: {100 * d['delta']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                  f"{100 * d['ci95'][1]:+.1f}] points (n={d['n']} held-out features)")
        else:
            print(f"{stage} - SFT GEN delta: n/a (no held-out feature scored for both)")


def parse_model(spec: str) -> tuple[Path, str, Path | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in EXPLAINER_STAGES or parts[1] == "base":
        raise SystemExit(f"--model {spec!r}: FOLDER:STAGE[:RAW_JSON] with STAGE one of sft, round1, round2")
    folder = Path(parts[0]).expanduser()
    if not (folder / parts[1] / "adapter" / "adapter_config.json").is_file():
        raise SystemExit(f"--model {spec!r}: {folder / parts[1] / 'adapter'} holds no trained adapter")
    return folder, parts[1], Path(parts[2]) if len(parts) == 3 else None


def heldout_delta(stage: str, raw: Path | None) -> float | None:
    """The model's held-out generation delta against SFT (points), from the evaluation's raw file."""
    if stage == "sft":
        return 0.0
    if raw is None:
        return None
    fig = json.loads(raw.read_text())["figures"].get(f"{stage}_minus_sft_gen")
    if not fig:
        raise SystemExit(f"{raw}: no {stage}_minus_sft_gen figure")
    return 100 * fig["delta"]


def by_feature(model_row: dict) -> dict[int, dict]:
    return {x["feature"]: x for x in model_row["features"]}


def paired_delta(base: list[dict], other: list[dict]) -> tuple[float | None, ...]:
    """`other` − `base` check reward over the check features both rewarded, in points: (mean, low, high), the
    percentile bootstrap 95 % interval over features (the report's)."""
    a = {x["feature"]: x["reward"] for x in base if x["reward"] is not None}
    diffs = [100 * (x["reward"] - a[x["feature"]]) for x in other if x["reward"] is not None and x["feature"] in a]
    return bootstrap_ci(diffs)


def raw_name(check_features: int | None, generation: bool, tag: str = "") -> str:
    """The raw file's name: the check's size when not the folder's, the generation reward, a tag."""
    return ("saeexplainer/unseen" + (f"-{check_features}" if check_features else "")
            + ("-generation" if generation else "") + (f"-{tag}" if tag else ""))


def moves(first: dict[int, dict], to: dict[int, dict]) -> dict[str, int]:
    """From one set of greedy check rows to another (feature → {"text", "reward"}): the features whose reward rose
    and fell (both rewarded; a failed reward is not compared) and whose text changed (both written)."""
    both = [f for f in first if first[f]["reward"] is not None and to.get(f, {}).get("reward") is not None]
    return {"rose": sum(to[f]["reward"] > first[f]["reward"] for f in both),
            "fell": sum(to[f]["reward"] < first[f]["reward"] for f in both),
            "changed": sum(to[f]["text"] != first[f]["text"] for f in first if f in to)}


def unseen_check(argv: list[str]) -> None:
    """Trained stages rewarded on unseen features, paired against SFT (see the module's docstring)."""
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(prog="python -m bench saeexplainer unseen-check")
    ap.add_argument("--check-dir", required=True, help="a training folder made with --dpo-features unseen "
                    "--dpo-check reward: its check features and reward")
    ap.add_argument("--model", action="append", required=True, help="FOLDER:STAGE[:RAW_JSON], repeated")
    ap.add_argument("--check-features", type=int, default=None, help="check on this many unseen features instead "
                    "of the folder's (the folder's first ones and more of the same draw; the settings go to a "
                    "sibling folder <check-dir>-check<N>, since a folder's config is fixed)")
    ap.add_argument("--generation-reward", action="store_true", help="reward each explanation with the "
                    "generation scorer itself (the CPU preset's sentences, greedy, half the feature's max: the score "
                    "bench/saeexplainer.py's evaluation gives) "
                    "instead of the folder's reward (the settings go to a sibling folder <check-dir>[-check<N>]-gen)")
    ap.add_argument("--tag", default="", help="append _<tag> to the raw file's name (a check of other models "
                    "that must not replace an earlier check's record)")
    ap.add_argument("--tokens", default="262144")
    args = ap.parse_args(argv)
    models = [parse_model(m) for m in args.model]
    check_dir = Path(args.check_dir).expanduser()
    saved = json.loads((check_dir / "config.json").read_text())["training"]
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.model_fields})
    if cfg.dpo_features != "unseen" or cfg.dpo_check != "reward":
        raise SystemExit(f"--check-dir {check_dir}: made with --dpo-features {cfg.dpo_features} --dpo-check "
                         f"{cfg.dpo_check}, not unseen / reward")
    more = bool(args.check_features) and args.check_features != cfg.dpo_check_features
    if more:
        cfg = cfg.model_copy(update={"dpo_check_features": args.check_features,
                                     "dir": str(check_dir.parent / f"{check_dir.name}-check{args.check_features}")})
    if args.generation_reward:
        gen = cpu_preset("", "", "", args.tokens).generation
        cfg = cfg.model_copy(update={"reward_source": "generation", "reward_texts": gen.sentences,
                                     "reward_repeats": 1, "reward_fraction": gen.fraction, "dir": f"{cfg.folder()}-gen"})
    store = cfg.store or str(home() / "bench.db")
    stages = cpu_preset("", "", "", args.tokens, store=store)
    t = Training(cfg, stages, echo=lambda m: print(m, flush=True))
    rows = []
    try:
        check = t.reward_check(lambda: LLM(stages.llm, store=t.store), t.vectors())
        for folder, stage, raw in models:
            t0 = time.perf_counter()
            ecfg = t.explainer.model_copy(update={"train_dir": str(folder), "stage": stage,
                                                  "device": cfg.train_device, "dtype": cfg.train_dtype})
            lm = ExplainerLM.load(ecfg, ecfg.adapters())
            res = check(lm)
            del lm
            rows.append({"folder": str(folder), "stage": stage, "check_reward": res["value"],
                         "rewarded": res["rewarded"], "heldout_delta": heldout_delta(stage, raw),
                         "features": res["features"], "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{folder.name}:{stage}: check reward {res['value']:.3f} over {res['rewarded']} features, "
                  f"held-out delta {rows[-1]['heldout_delta']} ({rows[-1]['seconds']:.0f}s)", flush=True)
    finally:
        t.close()
    sft = next((r for r in rows if r["stage"] == "sft"), None)
    print("| model | check reward (unseen) | − SFT (points, 95 % CI) | vs SFT: rose / fell / texts changed "
          "| held-out generation − SFT (points) |")
    print("|---|---|---|---|---|")
    for r in rows:
        m = moves(by_feature(sft), by_feature(r)) if sft is not None and r is not sft else None
        c = paired_delta(sft["features"], r["features"]) if m is not None else None
        r["vs_sft"], r["vs_sft_points"] = m, c
        d = r["heldout_delta"]
        print(f"| {Path(r['folder']).name}:{r['stage']} | {r['check_reward']:.3f} | "
              f"{'' if c is None else f'{c[0]:+.1f} [{c[1]:+.1f}, {c[2]:+.1f}]'} | "
              f"{'' if m is None else '{rose} / {fell} / {changed}'.format(**m)} | "
              f"{'n/a' if d is None else f'{d:+.1f}'} |")
    both = [(r["check_reward"], r["heldout_delta"]) for r in rows if r["heldout_delta"] is not None]
    rho = float(spearmanr(*zip(*both))[0]) if len(both) >= 3 else None
    name = raw_name(args.check_features if more else None, args.generation_reward, args.tag)
    record(name, {"check_dir": str(check_dir), "check_features": len(t.check_features()), "spearman": rho,
                  "reward_source": cfg.reward_source,
                  "models": len(both),
                  "check_reward": {f"{Path(r['folder']).name}:{r['stage']}": r["check_reward"] for r in rows}},
           rows)
    print(f"unseen check vs held-out delta Spearman: {'n/a' if rho is None else f'{rho:.3f}'} (n={len(both)})")


def _option(command: str, name: str, default: str) -> str:
    args = shlex.split(command)
    return args[args.index(name) + 1] if name in args else default


def _points(d: dict | None) -> str:
    if not d or not d.get("n"):
        return "—"
    return f"{100 * d['delta']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"


def report() -> None:
    """The study's table from the committed raw files (bench/results/saeexplainer/): one row per trained stage —
    its folder, reward, pair features, held-out generation − SFT (60 features) and the same on the unseen check
    features (the evaluation's generation scorer, paired against SFT), each with its 95 % CI."""
    folder = RESULTS / "saeexplainer"
    heldout = sorted((json.loads(p.read_text()) for p in folder.glob("heldout-*.json")), key=lambda d: d["finished"])
    unseen = [json.loads(p.read_text()) for p in sorted(folder.glob("unseen-*.json"))]
    if not heldout:
        raise SystemExit(f"{folder}: no held-out raw files (run `python -m bench saeexplainer` first)")
    unseen_delta: dict[str, tuple] = {}
    for doc in unseen:
        rows = {f"{Path(r['folder']).name}:{r['stage']}": r for r in doc["raw"]}
        sft = next(r for r in rows.values() if r["stage"] == "sft")
        for key, r in rows.items():
            if r is not sft and key not in unseen_delta:
                unseen_delta[key] = (paired_delta(sft["features"], r["features"]), len(r["features"]))
    lines = ["| trained stage (folder) | reward | pair features × pairs each | held-out − SFT (points, n) "
             "| unseen − SFT (points, n) | commit |", "|---|---|---|---|---|---|"]
    seen = set()
    sft_vs_oneshot = None
    for doc in heldout:
        cmd, fig = doc["command"], doc["figures"]
        sft_vs_oneshot = sft_vs_oneshot or fig.get("sft_minus_oneshot_gen")
        name = Path(_option(cmd, "--dir", "bench")).name
        for stage in ("round1", "round2"):
            d = fig.get(f"{stage}_minus_sft_gen")
            if d is None:
                continue
            key = f"{name}:{stage}"
            seen.add(key)
            u, n_u = unseen_delta.get(key, ((None,), 0))
            lines.append(f"| {key} | {_option(cmd, '--reward-source', 'llm')} | "
                         f"{_option(cmd, '--pair-features', '32')} × {_option(cmd, '--pairs-per-feature', '1')} | "
                         f"{_points(d)} (n={d['n']}) | "
                         f"{'—' if u[0] is None else f'{u[0]:+.1f} [{u[1]:+.1f}, {u[2]:+.1f}] (n={n_u})'} | "
                         f"{doc['commit']} |")
    for key, (u, n_u) in unseen_delta.items():
        if key not in seen:
            lines.append(f"| {key} | share | — | not evaluated | {u[0]:+.1f} [{u[1]:+.1f}, {u[2]:+.1f}] (n={n_u}) | — |")
    if sft_vs_oneshot:
        lines.append(f"SFT - one-shot GEN delta: {_points(sft_vs_oneshot)} points (n={sft_vs_oneshot['n']})")
    rounds2 = [d["figures"]["round2_minus_sft_gen"] for d in heldout if d["figures"].get("round2_minus_sft_gen")]
    best = max(rounds2, key=lambda d: d["delta"], default=None)
    if best and best.get("n"):
        lines.append(f"round2 - SFT GEN delta: {_points(best)} points (n={best['n']} held-out features, best round 2)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
