"""How far apart are a round's gain over SFT on unseen features and on the held-out ones, and how many features
would show a gain with the interval's low end above 0? Reads two committed raw files, runs no model:

    .venv/bin/python bench/saeexplainer_sample_size.py \\
        --unseen bench/results/saeexplainer_unseen_check144_generation.json \\
        --heldout bench/results/saeexplainer-saeexplainer-k4-64-share.json --folder bench-k4-64-share

Per stage present in both (round1, round2): the paired per-feature differences against SFT (points) on each set —
mean, s.d., standard error —, the gap between the two means in standard errors of their difference, and the
features a normal-approximation 95 % interval needs for its low end to clear 0 at a mean gain of 5 and 10 points
(n > (1.96 s.d. / gain)²), and for a true 10-point gain to do so four times in five ((1.96 + 0.84)² s.d.² / 10²),
at the unseen set's s.d. Last line: `sample size for a 5-point gain: <n> features`, at the largest s.d. seen."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

Z95, Z80 = 1.959964, 0.841621


def summary(diffs: list[float]) -> dict:
    sd = statistics.stdev(diffs)
    return {"n": len(diffs), "mean": statistics.fmean(diffs), "sd": sd, "se": sd / math.sqrt(len(diffs))}


def paired(base: dict[int, float | None], other: dict[int, float | None]) -> list[float]:
    """`other` − `base` in points over the features both scored."""
    return [100 * (v - base[f]) for f, v in other.items()
            if v is not None and base.get(f) is not None]


def needed(sd: float, gain: float, power_z: float = 0.0) -> int:
    return math.ceil(((Z95 + power_z) * sd / gain) ** 2)


def unseen_values(raw: dict, folder: str, sft_folder: str | None = None) -> dict[str, dict[int, float | None]]:
    """The folder's stages on the unseen features; SFT's from `sft_folder` when given (a folder that reused
    another's SFT model, e.g. with --reuse, and was checked on its later stages only)."""
    out = {r["stage"]: {x["feature"]: x["reward"] for x in r["features"]}
           for r in raw["raw"] if Path(r["folder"]).name == folder}
    if sft_folder:
        out["sft"] = unseen_values(raw, sft_folder)["sft"]
    return out


def heldout_values(raw: dict) -> dict[str, dict[int, float | None]]:
    out = {}
    for key, vals in raw["raw"]["values"].items():
        method, scorer = key.split("|")
        if scorer == "generation" and method.startswith("saeexplainer@"):
            out[method.split("@")[1]] = {int(f): v for f, v in vals.items()}
    return out


def compare(unseen: dict[str, dict], heldout: dict[str, dict]) -> list[dict]:
    rows = []
    for stage in ("round1", "round2"):
        if stage not in unseen or stage not in heldout or "sft" not in unseen or "sft" not in heldout:
            continue
        u, h = summary(paired(unseen["sft"], unseen[stage])), summary(paired(heldout["sft"], heldout[stage]))
        se_gap = math.hypot(u["se"], h["se"])
        rows.append({"stage": stage, "unseen": u, "heldout": h, "gap": u["mean"] - h["mean"], "gap_se": se_gap,
                     "gap_z": (u["mean"] - h["mean"]) / se_gap,
                     "needed": {"gain5": needed(u["sd"], 5), "gain10": needed(u["sd"], 10),
                                "gain10_power80": needed(u["sd"], 10, Z80)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unseen", required=True, help="bench/saeexplainer_unseen_check.py's raw file")
    ap.add_argument("--heldout", required=True, help="bench/saeexplainer.py's raw file of the same training folder")
    ap.add_argument("--folder", required=True, help="the training folder's name in the unseen raw file")
    ap.add_argument("--sft-folder", default=None, help="the folder whose SFT row is the baseline in the unseen raw "
                    "file (default --folder; the same SFT model, e.g. the folder --reuse copied it from)")
    args = ap.parse_args()
    unseen = unseen_values(json.loads(Path(args.unseen).read_text()), args.folder, args.sft_folder)
    heldout = heldout_values(json.loads(Path(args.heldout).read_text()))
    rows = compare(unseen, heldout)
    if not rows:
        raise SystemExit(f"{args.unseen} / {args.heldout}: no stage of {args.folder} with SFT in both files")
    print("| stage | unseen − SFT: n, mean, s.d., s.e. | held-out − SFT: n, mean, s.d., s.e. | gap (s.e., z) "
          "| features for lo > 0 at +5 / +10 / +10 four times in five |")
    print("|---|---|---|---|---|")
    for r in rows:
        u, h, n = r["unseen"], r["heldout"], r["needed"]
        print(f"| {r['stage']} | {u['n']}, {u['mean']:+.1f}, {u['sd']:.1f}, {u['se']:.2f} "
              f"| {h['n']}, {h['mean']:+.1f}, {h['sd']:.1f}, {h['se']:.2f} "
              f"| {r['gap']:.1f} ({r['gap_se']:.1f}, {r['gap_z']:.2f}) "
              f"| {n['gain5']} / {n['gain10']} / {n['gain10_power80']} |")
    print(f"sample size for a 5-point gain: {max(r['needed']['gain5'] for r in rows)} features")


if __name__ == "__main__":
    main()
