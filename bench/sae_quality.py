"""Quality of a trained SAE on the activations it was trained from: fraction of variance explained, mean L0
and dead features on the held-out contexts, and features that never fire on any token of the corpus.

    .venv/bin/python -m bench sae_quality [--sae <folder>]   (default: the default SAE)

Uses the SAE's saexplain_train_config.json to find the cached activations and the same held-out split.
Last line: `fve: <value>`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import load, record
from saexplain.subject.model import SubjectModel, load_model_and_tokenizer
from saexplain.subject.sae import default_sae_dir, load_sae
from saexplain.subject.train_sae import TrainSAEConfig, cached_activations, firing_counts, sae_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default=None)
    args = ap.parse_args()
    folder = Path(args.sae) if args.sae else default_sae_dir()
    cfg = TrainSAEConfig.load(folder / "saexplain_train_config.json")
    sae = load_sae(str(folder))
    model, tok = load_model_and_tokenizer(cfg.model)
    acts, body = cached_activations(SubjectModel(model, tok, cfg.hookpoint, name=cfg.model), cfg)
    n_ctx = len(acts) // body
    perm = torch.randperm(n_ctx, generator=torch.Generator().manual_seed(cfg.seed))  # as train_sae splits
    n_eval = max(1, int(n_ctx * cfg.eval_fraction))
    view = acts[: n_ctx * body].view(n_ctx, body, -1)
    eval_acts = view[perm[:n_eval]].reshape(-1, acts.shape[1])
    metrics = sae_metrics(sae, eval_acts)
    fired = firing_counts(sae, acts)
    metrics.update(never_fires_fraction=float((fired == 0).float().mean()),
                   fires_under_10_times_fraction=float((fired < 10).float().mean()), corpus_tokens=len(acts),
                   d_sae=int(sae.cfg.d_sae), k=int(sae.cfg.k))
    print(json.dumps(metrics, indent=1))
    record("sae_quality", {"fve": metrics["fraction_variance_explained"]}, metrics)
    print(f"fve: {metrics['fraction_variance_explained']:.3f}")


def report() -> None:
    """The committed record's figures (`python -m bench sae_quality --report`): nothing run."""
    m = load("sae_quality")["raw"]
    print(f"held-out tokens: {m['eval_tokens']:,}; mean L0 {m['mean_l0']:.1f}; dead on them {100 * m['dead_fraction']:.2f} %; "
          f"never firing on the corpus ({m['corpus_tokens']:,} tokens) {100 * m['never_fires_fraction']:.2f} %")
    print(f"fve: {m['fraction_variance_explained']:.3f}")


if __name__ == "__main__":
    main()
