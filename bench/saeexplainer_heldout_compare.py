"""Trained explainer stages side by side on the held-out features, feature by feature, from bench/saeexplainer.py's
raw files (the evaluation's generation score and text of each feature); runs no model:

    .venv/bin/python bench/saeexplainer_heldout_compare.py \\
        --sft bench/results/saeexplainer-saeexplainer-k4-64-share.json \\
        --model share-r1=bench/results/saeexplainer-saeexplainer-k4-64-share.json:round1 \\
        --model share-r2=bench/results/saeexplainer-saeexplainer-k4-64-share.json:round2 \\
        --model g2-r2=bench/results/saeexplainer-saeexplainer-k4-64-share-g2.json:round2

First table: each model against SFT (the `--sft` file's SFT stage) — features scored by both, mean difference in
points, features up / down, by SFT's score (0, between, 1: count and mean difference), and how many of the
model's texts are SFT's. Second table: each pair of models — mean difference, up / down, texts the same. Last line:
`heldout compare: <models> models, <n> features`."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path


def stage_rows(raw: dict, stage: str) -> dict[int, tuple[float | None, str | None]]:
    """feature → (generation score, text) of one stage in a bench/saeexplainer.py raw file."""
    method = f"saeexplainer@{stage}"
    out = {}
    for f, methods in raw["raw"]["features"].items():
        row = methods.get(method)
        if row is not None:
            out[int(f)] = ((row.get("scores") or {}).get("generation"), row.get("description"))
    if not out:
        raise SystemExit(f"no {method} rows in the raw file")
    return out


def parse_model(spec: str) -> tuple[str, Path, str]:
    label, sep, rest = spec.partition("=")
    path, sep2, stage = rest.rpartition(":")
    if not sep or not sep2 or not label or not stage:
        raise SystemExit(f"--model {spec!r}: LABEL=RAW_JSON:STAGE")
    return label, Path(path), stage


def diff(a: dict, b: dict) -> dict:
    """b − a in points over the features both scored; up / down counts; texts the same (over all shared)."""
    both = [f for f in a if f in b and a[f][0] is not None and b[f][0] is not None]
    d = [100 * (b[f][0] - a[f][0]) for f in both]
    return {"n": len(both), "mean": statistics.fmean(d) if d else None, "up": sum(x > 0 for x in d),
            "down": sum(x < 0 for x in d), "same_text": sum(a[f][1] == b[f][1] for f in a if f in b)}


def by_sft_level(sft: dict, model: dict) -> dict[str, tuple[int, float | None]]:
    """Mean difference against SFT where SFT's score is 0, between 0 and 1, or 1."""
    out = {}
    for name, keep in (("0", lambda v: v == 0), ("between", lambda v: 0 < v < 1), ("1", lambda v: v == 1)):
        d = [100 * (model[f][0] - v) for f, (v, _) in sft.items()
             if v is not None and keep(v) and f in model and model[f][0] is not None]
        out[name] = (len(d), statistics.fmean(d) if d else None)
    return out


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", required=True, help="the raw file whose SFT stage is the baseline")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=RAW_JSON:STAGE")
    args = ap.parse_args()
    sft = stage_rows(json.loads(Path(args.sft).read_text()), "sft")
    models = {}
    for spec in args.model:
        label, path, stage = parse_model(spec)
        models[label] = stage_rows(json.loads(path.read_text()), stage)
    print("| model | − SFT: n, mean (points), up / down | SFT 0: n, mean | SFT between: n, mean | SFT 1: n, mean "
          "| texts = SFT's |")
    print("|---|---|---|---|---|---|")
    for label, m in models.items():
        d, lv = diff(sft, m), by_sft_level(sft, m)
        print(f"| {label} | {d['n']}, {fmt(d['mean'])}, {d['up']} / {d['down']} | "
              + " | ".join(f"{n}, {fmt(v)}" for n, v in lv.values()) + f" | {d['same_text']} |")
    print()
    print("| model − model | n, mean (points), up / down | texts the same |")
    print("|---|---|---|")
    for (la, a), (lb, b) in itertools.combinations(models.items(), 2):
        d = diff(a, b)
        print(f"| {lb} − {la} | {d['n']}, {fmt(d['mean'])}, {d['up']} / {d['down']} | {d['same_text']} |")
    print(f"heldout compare: {len(models)} models, {len(sft)} features")


if __name__ == "__main__":
    main()
