"""Does SAEExplainer's pair reward order candidates as the generation score would? An analysis of a training
folder's rounds, no LLM call: the reward of a candidate is the highest activation its reward texts reach relative
to the feature's max (`train/data.py`); generation counts the share of its texts whose max activation reaches
`fraction` × the feature's max. This measures the second on the same reward texts (the oracle only) and compares,
over every rewarded candidate (Spearman) and over the pairs the round's rules build (does the share order each
pair's chosen text above its rejected one, reverse it, or tie?).

    .venv/bin/python bench/saeexplainer_reward_check.py --dir $SAEXPLAIN_HOME/saeexplainer/bench-k4

Last line: `share reward reversals: <reversed> of <pairs> pairs`; raw: bench/results/saeexplainer_reward_check.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from results import record
from scipy.stats import spearmanr

from saexplain.score.generative import GenerationConfig
from saexplain.subject.config import SubjectConfig
from saexplain.subject.oracle import Oracle
from saexplain.train.config import TrainConfig
from saexplain.train.data import Candidate, build_pairs, load_jsonl


def check_round(folder: Path, rnd: str, oracle: Oracle, cfg: TrainConfig, fraction: float) -> dict:
    d = folder / rnd
    noise = json.loads((d / "pairs.json").read_text())["reward_noise"]
    rewards, shares, pairs_out = [], [], []
    for row in load_jsonl(d / "candidates.jsonl").values():  # a feature's last line (a retry appends one)
        f, mx = row["feature"], row["max_act"]
        cands = [Candidate(**c) for c in row["candidates"]]
        texts = sorted({t for c in cands for t in c.texts})
        acts = dict(zip(texts, (r.max(f) for r in oracle.activations(texts, [f])))) if texts else {}
        share = {c.text: float(np.mean([acts[t] >= fraction * mx for t in c.texts])) for c in cands if c.texts}
        for c in cands:
            if c.reward is not None and c.text in share:
                rewards.append(c.reward)
                shares.append(share[c.text])
        pairs, _ = build_pairs(f, cands, cfg, noise)
        pairs_out += [{"feature": f, "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward,
                       "rejected_reward": p.rejected_reward, "chosen_share": share[p.chosen],
                       "rejected_share": share[p.rejected]} for p in pairs]
    agree = sum(p["chosen_share"] > p["rejected_share"] for p in pairs_out)
    rev = sum(p["chosen_share"] < p["rejected_share"] for p in pairs_out)
    fig = {"candidates": len(rewards), "spearman": float(spearmanr(rewards, shares)[0]), "pairs": len(pairs_out),
           "share_agrees": agree, "share_reverses": rev, "ties": len(pairs_out) - agree - rev,
           "mean_share_chosen": float(np.mean([p["chosen_share"] for p in pairs_out])),
           "mean_share_rejected": float(np.mean([p["rejected_share"] for p in pairs_out]))}
    print(f"{rnd}: {fig['candidates']} rewarded candidates, Spearman(max reward, share reward) "
          f"{fig['spearman']:.3f}; {fig['pairs']} pairs: the share orders {agree} the same way, reverses {rev}, "
          f"ties {fig['ties']}; mean share chosen {fig['mean_share_chosen']:.3f}, rejected "
          f"{fig['mean_share_rejected']:.3f}", flush=True)
    return {"figures": fig, "pairs": pairs_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="SAEExplainer training folder")
    ap.add_argument("--rounds", default="round1,round2", help="rounds to check (those with candidates)")
    a = ap.parse_args()
    folder = Path(a.dir).expanduser()
    config = json.loads((folder / "config.json").read_text())
    cfg = TrainConfig(**config["training"])
    oracle = Oracle.from_config(SubjectConfig(**config["subject"]))
    fraction = GenerationConfig().fraction
    out = {r: check_round(folder, r, oracle, cfg, fraction) for r in a.rounds.split(",")
           if (folder / r / "candidates.jsonl").is_file()}
    figures = {r: v["figures"] for r, v in out.items()}
    record("saeexplainer_reward_check", {"folder": str(folder), "fraction": fraction, **figures},
           {r: v["pairs"] for r, v in out.items()})
    print(f"share reward reversals: {sum(f['share_reverses'] for f in figures.values())} of "
          f"{sum(f['pairs'] for f in figures.values())} pairs")


if __name__ == "__main__":
    main()
