"""Small figures of SAEExplainer training folders, read from their files (no model, no LLM):
- per round, its pairs record (`pairs.json`): pairs, features giving pairs, rewards, and why features gave none;
- the mean reward of two rounds' candidates over the features both have rewarded (e.g. round 1 = the SFT model's
  candidates, round 2 = the round-1 model's, under the same reward), and the mean per-feature best;
- how many preference pairs two folders' rounds share (same feature, chosen and rejected text);
- with `--rewards-of OTHER_FOLDER` (the same round-1 candidates under another reward, e.g. the share reward's
  texts against the generation scorer's): how the two rewards agree on the candidates both rewarded — Spearman
  within each feature (the order pairs are drawn from) — and each folder's pairs ordered by the other's reward;
- per round trained with the reward check (`--dpo-check reward`, its `early_stop.json`): the check's mean reward
  by epoch, and from epoch 0 to the kept one how many check features' rewards rose or fell and texts changed;
  with `--check-of OTHER_FOLDER`, the same means over OTHER's check features only (two trainings compared on
  the features they share).

    .venv/bin/python bench/saeexplainer_compare_rounds.py --dir FOLDER [--pairs-of OTHER] [--check-of OTHER] \
        [--rewards-of OTHER]

Last line, where the folder has both rounds' candidates: `round2 - round1 mean reward: <delta> (n=<features>)`."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from saexplain.train.data import load_jsonl


def rewards(row: dict) -> list[float]:
    return [c["reward"] for c in row["candidates"] if c["reward"] is not None]


def compare_rounds(r1: dict, r2: dict) -> dict:
    """Over the features both rounds have rewarded (each feature's last line, as `load_jsonl` returns them): the
    mean reward of all their candidates and the mean of each feature's best, per round."""
    feats = [f for f in r2 if f in r1 and rewards(r1[f]) and rewards(r2[f])]
    rounds = (("round1", r1), ("round2", r2))
    return {"features": len(feats),
            "mean": {k: float(np.mean([x for f in feats for x in rewards(r[f])])) for k, r in rounds},
            "best": {k: float(np.mean([max(rewards(r[f])) for f in feats])) for k, r in rounds}}


def dropped_reasons(dropped: dict[str, str]) -> Counter:
    """Why features gave no pair (`pairs.json` `dropped`: feature → reason), counted by the reason's words (its
    figures left out: 'best reward 0.000 < 0.1' and 'best reward 0.050 < 0.1' are one reason)."""
    return Counter(re.split(r"\s[-+]?\d", reason, maxsplit=1)[0] for reason in dropped.values())


def check_summary(state: dict, features: set[int] | None = None) -> dict:
    """A reward check's record (`early_stop.json` with `check` 'check_reward'): per epoch, the mean reward over
    `features` (all the check's when None; failed rewards left out, as the check does); from epoch 0 to the
    kept epoch, and to the last epoch trained, the features whose reward rose, fell, and whose text changed."""
    def by_feature(epoch: dict) -> dict[int, dict]:
        return {r["feature"]: r for r in epoch["features"] if features is None or r["feature"] in features}

    epochs = {e["epoch"]: by_feature(e) for e in state["epochs"]}
    means = {k: float(np.mean([r["reward"] for r in rows.values() if r["reward"] is not None]))
             for k, rows in epochs.items()}
    first, last = epochs[0], max(epochs)
    return {"features": len(first), "means": means, "kept": state["best_epoch"],
            **moves(first, epochs[state["best_epoch"]]), "last": last,
            **{f"last_{k}": v for k, v in moves(first, epochs[last]).items()}}


def moves(first: dict[int, dict], to: dict[int, dict]) -> dict[str, int]:
    """From one set of greedy check rows to another (feature → {"text", "reward"}): the features whose reward rose
    and fell (both rewarded; a failed reward is not compared) and whose text changed (both written)."""
    both = [f for f in first if first[f]["reward"] is not None and to.get(f, {}).get("reward") is not None]
    return {"rose": sum(to[f]["reward"] > first[f]["reward"] for f in both),
            "fell": sum(to[f]["reward"] < first[f]["reward"] for f in both),
            "changed": sum(to[f]["text"] != first[f]["text"] for f in first if f in to)}


def by_text(rows: dict) -> dict[int, dict[str, float]]:
    """Each feature's rewarded candidates (`load_jsonl` rows): text → reward (empty and failed ones left out)."""
    return {f: {c["text"]: c["reward"] for c in r["candidates"] if c["text"] and c["reward"] is not None}
            for f, r in rows.items()}


def reward_agreement(mine: dict[int, dict[str, float]], other: dict[int, dict[str, float]]) -> dict:
    """Two rewards of the same candidates (`by_text` of two folders): over the features where both rewards vary,
    the Spearman correlation between them within each feature (median, mean), the number of candidates both
    rewarded and each reward's mean over them."""
    from scipy.stats import spearmanr

    rhos, all_a, all_b = [], [], []
    for f in sorted(set(mine) & set(other)):
        common = [t for t in mine[f] if t in other[f]]
        a, b = [mine[f][t] for t in common], [other[f][t] for t in common]
        all_a += a
        all_b += b
        if len(set(a)) > 1 and len(set(b)) > 1:
            rhos.append(float(spearmanr(a, b)[0]))
    return {"candidates": len(all_a), "mean_here": float(np.mean(all_a)) if all_a else None,
            "mean_other": float(np.mean(all_b)) if all_b else None, "features": len(rhos), "median": float(np.median(rhos)) if rhos else None,
            "mean": float(np.mean(rhos)) if rhos else None}


def pairs_ordered(pairs: list[tuple[int, str, str]], reward: dict[int, dict[str, float]]) -> dict[str, int]:
    """Preference pairs (feature, chosen, rejected) ordered by another reward of the same texts: how many it
    orders the same way, ties or reverses (pairs with a text it did not reward are left out)."""
    out = {"pairs": 0, "same": 0, "tie": 0, "reversed": 0}
    for f, c, r in pairs:
        rc, rr = reward.get(f, {}).get(c.strip()), reward.get(f, {}).get(r.strip())
        if rc is None or rr is None:
            continue
        out["pairs"] += 1
        out["same" if rc > rr else "tie" if rc == rr else "reversed"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--pairs-of", default=None, help="another folder: count round-1 pairs the two share")
    ap.add_argument("--check-of", default=None, help="another folder trained with the reward check: this folder's "
                    "check means over its check features")
    ap.add_argument("--rewards-of", default=None, help="another folder with the same round-1 candidates under "
                    "another reward: how the two rewards agree")
    a = ap.parse_args()
    folder = Path(a.dir).expanduser()
    for rnd in ("round1", "round2"):
        es = folder / rnd / "early_stop.json"
        if not es.is_file() or json.loads(es.read_text()).get("check") != "check_reward":
            continue
        state = json.loads(es.read_text())
        subsets = [("its", None)]
        if a.check_of:
            other = json.loads((Path(a.check_of).expanduser() / rnd / "early_stop.json").read_text())
            subsets.append((f"{a.check_of}'s", {r["feature"] for r in other["epochs"][0]["features"]}))
        for name, feats in subsets:
            c = check_summary(state, feats)
            print(f"{rnd} reward check on {name} {c['features']} features, mean by epoch: "
                  + ", ".join(f"{k}: {v:.3f}" for k, v in c["means"].items())
                  + f"; kept epoch {c['kept']}: {c['rose']} rose, {c['fell']} fell, {c['changed']} texts changed "
                  f"from epoch 0" + ("" if c["last"] == c["kept"] else
                                     f"; last epoch {c['last']}: {c['last_rose']} rose, {c['last_fell']} fell, "
                                     f"{c['last_changed']} texts changed"))
    for rnd in ("round1", "round2"):
        if (folder / rnd / "pairs.json").is_file():
            p = json.loads((folder / rnd / "pairs.json").read_text())
            r = p["rewards"]
            why = "; ".join(f"{k}: {n}" for k, n in dropped_reasons(p["dropped"]).most_common())
            print(f"{rnd}: {p['pairs']} pairs from {p['features_with_pairs']} features; rewards non-zero "
                  f"{r['nonzero']} of {r['candidates']}, mean {r['mean_reward']:.3f}, per-feature best mean "
                  f"{r['best_mean']:.3f}; {p.get('failed', 0)} failed; no pair: {why}")
    if a.pairs_of:
        from datasets import load_from_disk

        def pairs(d: Path) -> set:
            return {(r["feature"], r["chosen"], r["rejected"]) for r in load_from_disk(str(d / "round1" / "pairs"))}
        mine, other = pairs(folder), pairs(Path(a.pairs_of).expanduser())
        print(f"round-1 pairs: {len(mine)} here, {len(other)} in {a.pairs_of}, {len(mine & other)} the same")
    if a.rewards_of:
        from datasets import load_from_disk

        other_dir = Path(a.rewards_of).expanduser()
        mine, other = (by_text(load_jsonl(d / "round1" / "candidates.jsonl")) for d in (folder, other_dir))
        ag = reward_agreement(mine, other)
        print(f"round-1 rewards here and in {a.rewards_of}: {ag['candidates']} candidates both rewarded, mean "
              f"reward {ag['mean_here']:.3f} here, {ag['mean_other']:.3f} there; "
              f"Spearman within a feature over {ag['features']} features: median {ag['median']:.2f}, "
              f"mean {ag['mean']:.2f}")
        for name, d, reward in (("this folder's", folder, other), (f"{a.rewards_of}'s", other_dir, mine)):
            ps = [(r["feature"], r["chosen"], r["rejected"]) for r in load_from_disk(str(d / "round1" / "pairs"))
                  if r["feature"] in mine and r["feature"] in other]
            o = pairs_ordered(ps, reward)
            print(f"{name} round-1 pairs on the features both rewarded, by the other reward: {o['pairs']} pairs, "
                  f"{o['same']} the same order, {o['tie']} tied, {o['reversed']} reversed")
    if not all((folder / f"round{i}" / "candidates.jsonl").is_file() for i in (1, 2)):
        return
    r1, r2 = (load_jsonl(folder / f"round{i}" / "candidates.jsonl") for i in (1, 2))
    fig = compare_rounds(r1, r2)
    print(f"over {fig['features']} features: mean reward round1 {fig['mean']['round1']:.3f}, round2 "
          f"{fig['mean']['round2']:.3f}; per-feature best {fig['best']['round1']:.3f}, {fig['best']['round2']:.3f}")
    print(f"round2 - round1 mean reward: {fig['mean']['round2'] - fig['mean']['round1']:+.3f} (n={fig['features']})")


if __name__ == "__main__":
    main()
