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
import time
from pathlib import Path

import numpy as np
from results import record
from scipy.stats import spearmanr

from saexplain.errors import SaexplainError
from saexplain.pipeline.presets import cpu_preset
from saexplain.score.generative import GenerationConfig
from saexplain.train.config import TrainConfig
from saexplain.train.data import Candidate, build_pairs, corpus_reward, load_jsonl, max_by_text, set_reward
from saexplain.train.pipeline import Training


def compare(name: str, rnd: str, base: list[float], other: list[float], pairs: list[dict]) -> dict:
    """How reward `name` (the pairs' `chosen_<name>` / `rejected_<name>`) agrees with the round's reward: Spearman
    over the candidates, and per pair of the round's rules: same order, reversed or tied."""
    ok = [p for p in pairs if p[f"chosen_{name}"] is not None and p[f"rejected_{name}"] is not None]
    agree = sum(p[f"chosen_{name}"] > p[f"rejected_{name}"] for p in ok)
    rev = sum(p[f"chosen_{name}"] < p[f"rejected_{name}"] for p in ok)
    fig = {"candidates": len(base), "spearman": float(spearmanr(base, other)[0]), "pairs": len(ok),
           "agrees": agree, "reverses": rev, "ties": len(ok) - agree - rev}
    print(f"{rnd}: {name} reward vs the round's reward over {len(base)} candidates: Spearman {fig['spearman']:.3f}; "
          f"on the round's {len(ok)} pairs it orders {agree} the same way, reverses {rev}, ties {fig['ties']}",
          flush=True)
    return fig


def check_round(folder: Path, rnd: str, t: Training, fraction: float) -> dict:
    """Both other rewards of one round's candidates: the share (generation's count, on the same reward texts,
    measured by the oracle) and the corpus reward (no oracle, no LLM)."""
    d = folder / rnd
    noise = json.loads((d / "pairs.json").read_text())["reward_noise"]
    corpus_cfg = t.cfg.model_copy(update={"reward_source": "corpus", "reward_repeats": 1})
    base = {"share": [], "corpus": []}
    other = {"share": [], "corpus": []}
    pairs_out, seconds, built = [], [], 0
    for row in load_jsonl(d / "candidates.jsonl").values():  # a feature's last line (a retry appends one)
        f, mx = row["feature"], row["max_act"]
        cands = [Candidate(**c) for c in row["candidates"]]  # as the round's rules saw them
        uniq = list({c.text: c for c in cands}.values())  # each distinct candidate counted once
        acts = max_by_text(t.oracle, [x for c in uniq for x in c.texts], f)
        by = {"share": {c.text: set_reward([acts[x] for x in c.texts], mx, "share", fraction)
                        for c in uniq if c.texts},
              "corpus": {}}
        for c in uniq:
            if not c.text:
                continue
            t0 = time.perf_counter()
            try:
                by["corpus"][c.text] = corpus_reward(c.text, t.records[f], t.cfg.reward_fraction).reward
            except SaexplainError:  # names no word
                pass
            seconds.append(time.perf_counter() - t0)
        for name, values in by.items():
            for c in uniq:
                if c.reward is not None and c.text in values:
                    base[name].append(c.reward)
                    other[name].append(values[c.text])
        pairs_out += [{"feature": f, "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward,
                       "rejected_reward": p.rejected_reward,
                       **{f"{k}_{name}": by[name].get(getattr(p, k)) for name in by for k in ("chosen", "rejected")}}
                      for p in build_pairs(f, cands, t.cfg, noise)[0]]
        built += len(build_pairs(f, [Candidate(c.text, by["corpus"].get(c.text)) for c in cands], corpus_cfg)[0])
    figs = {name: compare(name, rnd, base[name], other[name], pairs_out) for name in by}
    figs["share"] |= {k: float(np.mean([p[f"{k}_share"] for p in pairs_out])) for k in ("chosen", "rejected")}
    figs["corpus"] |= {"pairs_it_builds": built, "seconds_per_candidate": float(np.mean(seconds))}
    print(f"{rnd}: share of chosen / rejected texts {figs['share']['chosen']:.3f} / {figs['share']['rejected']:.3f}; "
          f"the corpus reward would build {built} pairs from these candidates ({t.cfg.pairs_per_feature} per "
          f"feature at most), {figs['corpus']['seconds_per_candidate']:.2f} s per candidate", flush=True)
    return {"figures": figs, "pairs": pairs_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="SAEExplainer training folder")
    ap.add_argument("--rounds", default="round1,round2", help="rounds to check (those with candidates)")
    a = ap.parse_args()
    folder = Path(a.dir).expanduser()
    config = json.loads((folder / "config.json").read_text())
    cfg = TrainConfig(**config["training"])
    fraction = GenerationConfig().fraction
    rounds = [r for r in a.rounds.split(",") if (folder / r / "candidates.jsonl").is_file()]
    t = Training(cfg, cpu_preset("", "", "", config["cache"]["tokens"], store=cfg.store), echo=lambda m: None)
    out = {r: check_round(folder, r, t, fraction) for r in rounds}
    t.close()
    figures = {r: v["figures"] for r, v in out.items()}
    record("saeexplainer_reward_check", {"folder": str(folder), "fraction": fraction, **figures},
           {r: v["pairs"] for r, v in out.items()})
    for name in ("corpus", "share"):
        print(f"{name} reward reversals: {sum(f[name]['reverses'] for f in figures.values())} of "
              f"{sum(f[name]['pairs'] for f in figures.values())} pairs")

if __name__ == "__main__":
    main()
