"""Does DPO's reward check on unseen features rank trained explainers as the held-out evaluation does? Each model
(a training folder's stage) writes its greedy explanation of the check features of `--check-dir` — a folder made
with `--dpo-features unseen --dpo-check reward`: band features neither trained on nor held out — and each
explanation is rewarded as that folder's check rewards it (the share reward on one greedy set of LLM texts). The
mean is set beside the model's held-out generation delta against SFT, read from the evaluation's raw file.

    .venv/bin/python bench/saeexplainer_unseen_check.py --check-dir $SAEXPLAIN_HOME/saeexplainer/bench-unseen-check48 \\
        --model FOLDER:STAGE[:RAW_JSON] [--model ...]

STAGE is sft, round1 or round2; RAW_JSON is the bench/saeexplainer.py result holding `<STAGE>_minus_sft_gen` (SFT's
delta is 0 by definition). The LLM requests go through the store's request cache, so a rerun costs the model
loads and greedy generation only. `--check-features N` checks on N unseen features (the folder's and the next
of the same draw). `--generation-reward` rewards each explanation with the generation scorer itself (its prompt,
the CPU preset's sentence count, greedy: the score bench/saeexplainer.py's evaluation gives it) instead of the
folder's reward. Last line: `unseen check vs held-out delta Spearman: <rho> (n=<models>)`; raw:
bench/results/saeexplainer_unseen_check[N][_generation][_TAG].json (`--tag TAG`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from results import record
from saeexplainer_compare_rounds import moves
from scipy.stats import spearmanr

from saexplain.explain.saeexplainer import STAGES, ExplainerLM
from saexplain.llm import LLM
from saexplain.paths import home
from saexplain.pipeline.presets import cpu_preset
from saexplain.report import bootstrap_ci
from saexplain.train.config import TrainConfig
from saexplain.train.pipeline import Training


def parse_model(spec: str) -> tuple[Path, str, Path | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in STAGES or parts[1] == "base":
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
    return ("saeexplainer_unseen_check" + (f"{check_features}" if check_features else "")
            + ("_generation" if generation else "") + (f"_{tag}" if tag else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
