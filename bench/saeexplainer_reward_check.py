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
from saexplain.subject.config import SubjectConfig
from saexplain.subject.oracle import Oracle
from saexplain.train.config import TrainConfig
from saexplain.train.data import Candidate, build_pairs, corpus_reward, load_jsonl
from saexplain.train.pipeline import Training


def check_corpus(folder: Path, rnd: str, records: dict, cfg: TrainConfig) -> dict:
    """The corpus reward (`reward_source` corpus, no LLM) of the same candidates against their LLM reward."""
    d = folder / rnd
    noise = json.loads((d / "pairs.json").read_text())["reward_noise"]
    llm_r, corpus_r, pairs_out, seconds = [], [], [], []
    corpus_cfg = cfg.model_copy(update={"reward_source": "corpus", "reward_repeats": 1})
    built = 0
    for row in load_jsonl(d / "candidates.jsonl").values():
        f = row["feature"]
        cands = [Candidate(**c) for c in row["candidates"]]
        by_text = {}
        for c in cands:
            if c.text in by_text or not c.text:
                continue
            t0 = time.perf_counter()
            try:
                by_text[c.text] = corpus_reward(c.text, records[f], cfg.reward_fraction).reward
            except SaexplainError:
                by_text[c.text] = None
            seconds.append(time.perf_counter() - t0)
            if c.reward is not None and by_text[c.text] is not None:
                llm_r.append(c.reward)
                corpus_r.append(by_text[c.text])
        pairs, _ = build_pairs(f, cands, cfg, noise)
        pairs_out += [{"feature": f, "chosen": p.chosen, "rejected": p.rejected, "chosen_reward": p.chosen_reward,
                       "rejected_reward": p.rejected_reward, "chosen_corpus": by_text.get(p.chosen),
                       "rejected_corpus": by_text.get(p.rejected)} for p in pairs]
        as_corpus = [Candidate(c.text, by_text.get(c.text)) for c in cands]
        built += len(build_pairs(f, as_corpus, corpus_cfg, None)[0])
    ok = [p for p in pairs_out if p["chosen_corpus"] is not None and p["rejected_corpus"] is not None]
    agree = sum(p["chosen_corpus"] > p["rejected_corpus"] for p in ok)
    rev = sum(p["chosen_corpus"] < p["rejected_corpus"] for p in ok)
    fig = {"candidates": len(llm_r), "spearman": float(spearmanr(llm_r, corpus_r)[0]), "pairs": len(ok),
           "corpus_agrees": agree, "corpus_reverses": rev, "ties": len(ok) - agree - rev,
           "pairs_the_corpus_reward_builds": built, "seconds_per_candidate": float(np.mean(seconds))}
    print(f"{rnd}: corpus reward vs LLM reward over {fig['candidates']} candidates: Spearman {fig['spearman']:.3f}; "
          f"on the round's {len(ok)} pairs it orders {agree} the same way, reverses {rev}, ties {fig['ties']}; "
          f"it would build {built} pairs from these candidates ({cfg.pairs_per_feature} per feature at most); "
          f"{fig['seconds_per_candidate']:.2f} s per candidate", flush=True)
    return {"figures": fig, "pairs": pairs_out}


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
    rounds = [r for r in a.rounds.split(",") if (folder / r / "candidates.jsonl").is_file()]
    out = {r: check_round(folder, r, oracle, cfg, fraction) for r in rounds}
    t = Training(cfg, cpu_preset("", "", "", config["cache"]["tokens"], store=cfg.store), echo=lambda m: None)
    corpus = {r: check_corpus(folder, r, t.records, cfg) for r in rounds}
    t.close()
    figures = {r: v["figures"] for r, v in out.items()}
    record("saeexplainer_reward_check", {"folder": str(folder), "fraction": fraction, **figures,
                                         "corpus": {r: v["figures"] for r, v in corpus.items()}},
           {**{r: v["pairs"] for r, v in out.items()}, "corpus": {r: v["pairs"] for r, v in corpus.items()}})
    print(f"corpus reward reversals: {sum(v['figures']['corpus_reverses'] for v in corpus.values())} of "
          f"{sum(v['figures']['pairs'] for v in corpus.values())} pairs")
    print(f"share reward reversals: {sum(f['share_reverses'] for f in figures.values())} of "
          f"{sum(f['pairs'] for f in figures.values())} pairs")


if __name__ == "__main__":
    main()
