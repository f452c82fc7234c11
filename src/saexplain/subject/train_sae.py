"""Train the offline default SAE: TopK on Gemma 3 270M's layer-6 residual stream, with sae-lens's trainer.

Activations come from our truncated forward (blocks after the hookpoint never run), are generated once into
RAM as float16, then shuffled into training batches for as many passes as `tokens` asks. The result is saved
in SAELens format with its metrics (fraction of variance explained, L0, dead features) beside it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saexplain.data.corpus import iter_documents
from saexplain.paths import home
from saexplain.subject.config import TrainSAEConfig
from saexplain.subject.model import SubjectModel, load_model_and_tokenizer

log = logging.getLogger(__name__)


def collect_activations(subject: SubjectModel, texts, context: int, max_tokens: int,
                        batch_size: int = 16) -> tuple[torch.Tensor, int]:
    """Contexts of `context` tokens (BOS + text tokens) → hookpoint activations of the text tokens, fp16."""
    tok = subject.tokenizer
    bos = [tok.bos_token_id] if subject.prepend_bos else []
    body = context - len(bos)

    def contexts():
        buf: list[int] = []
        for t in texts:
            buf += tok(t, add_special_tokens=False)["input_ids"]
            while len(buf) >= body:
                yield bos + buf[:body]
                buf = buf[body:]

    n_ctx = max_tokens // body
    out = torch.empty((n_ctx * body, subject.d_model), dtype=torch.float16)
    filled = 0
    batch: list[list[int]] = []
    pbar = tqdm(total=n_ctx * body, desc="activations", unit="tok", unit_scale=True)
    t0 = time.perf_counter()

    def flush():
        nonlocal filled
        h = subject.hidden(torch.tensor(batch))[:, len(bos):, :].reshape(-1, subject.d_model)
        out[filled:filled + len(h)] = h.to(torch.float16)
        filled += len(h)
        pbar.update(len(h))
        batch.clear()

    for ctx in contexts():
        batch.append(ctx)
        if len(batch) == batch_size:
            flush()
        if filled + len(batch) * body >= len(out):
            break
    if batch and filled + len(batch) * body <= len(out):
        flush()
    pbar.close()
    log.info("collected %d tokens in %.0fs", filled, time.perf_counter() - t0)
    return out[:filled], body


def cached_activations(subject: SubjectModel, cfg: TrainSAEConfig) -> tuple[torch.Tensor, int]:
    """Training activations, collected once per (model, hookpoint, corpus, context, cap) and kept on disk as
    float16 under $SAEXPLAIN_HOME/activations, so retraining an SAE skips the forward passes."""
    from saexplain.data.contexts import CorpusConfig

    corpus = CorpusConfig(corpus=cfg.corpus, context=cfg.context)
    key = hashlib.sha256(json.dumps([cfg.model, subject.hookpoint.saelens_name, corpus.fingerprint(),
                                     cfg.max_corpus_tokens]).encode()).hexdigest()[:16]
    path = home() / "activations" / f"{key}.npy"
    body = cfg.context - 1
    if path.is_file():
        return torch.from_numpy(np.load(path, mmap_mode="r")[:]), body
    texts = (d.text for d in iter_documents(corpus.sources()))
    acts, body = collect_activations(subject, texts, cfg.context, cfg.max_corpus_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, acts.numpy())
    tmp.rename(path)
    return acts, body


def batches(acts: torch.Tensor, batch_tokens: int, seed: int):
    """Endless shuffled float32 batches over `acts` (one permutation per pass)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=g)
        for i in range(0, len(perm) - batch_tokens + 1, batch_tokens):
            yield acts[perm[i:i + batch_tokens]].float()


@torch.no_grad()
def sae_metrics(sae, acts: torch.Tensor, chunk: int = 8192) -> dict:
    """Fraction of variance explained, mean L0 and dead-feature fraction on held-out activations."""
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.long)
    sse = 0.0
    l0 = 0.0
    mean = _mean(acts)
    sst = 0.0
    for i in range(0, len(acts), chunk):
        x = acts[i:i + chunk].float()
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += float(((x - x_hat) ** 2).sum())
        sst += float(((x - mean) ** 2).sum())
        nz = f > 0
        l0 += float(nz.sum())
        fired += nz.sum(0)
    return {
        "fraction_variance_explained": 1 - sse / sst,
        "mean_l0": l0 / len(acts),
        "dead_fraction": float((fired == 0).float().mean()),
        "eval_tokens": len(acts),
    }


@torch.no_grad()
def firing_counts(sae, acts: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """How many tokens each feature fires on."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for i in range(0, len(acts), chunk):
        fired += (sae.encode(acts[i:i + chunk].float()) > 0).sum(0)
    return fired


def train_sae(cfg: TrainSAEConfig) -> Path:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    out = cfg.output_dir()
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    subject = SubjectModel(model, tokenizer, cfg.hookpoint, name=cfg.model, prepend_bos=True)
    t0 = time.perf_counter()
    acts, body = cached_activations(subject, cfg)
    collect_s = time.perf_counter() - t0
    # Hold out whole contexts (not shuffled tokens) for the metrics.
    n_ctx = len(acts) // body
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n_ctx, generator=g)
    n_eval = max(1, int(n_ctx * cfg.eval_fraction))
    eval_idx, train_idx = perm[:n_eval], perm[n_eval:]
    view = acts.view(n_ctx, body, -1)
    eval_acts = view[eval_idx].reshape(-1, acts.shape[1])
    train_acts = view[train_idx].reshape(-1, acts.shape[1])
    del view, acts

    steps = math.ceil(cfg.tokens / cfg.batch_tokens)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=subject.d_model, d_sae=cfg.d_sae, k=cfg.k, normalize_activations="expected_average_only_in",
        aux_loss_coefficient=cfg.aux_loss_coefficient,
    )
    sae_cfg.metadata.model_name = cfg.model
    sae_cfg.metadata.hook_name = subject.hookpoint.saelens_name
    sae_cfg.metadata.context_size = cfg.context
    sae_cfg.metadata.prepend_bos = True
    sae_cfg.metadata.exclude_special_tokens = True
    sae = TopKTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_tokens, train_batch_size_samples=cfg.batch_tokens, lr=cfg.lr, lr_end=cfg.lr / 10,
        lr_warm_up_steps=min(50, steps // 10), lr_decay_steps=steps // 5, device="cpu",
        dead_feature_window=cfg.dead_window_steps, feature_sampling_window=max(50, steps // 4),
        n_batches_for_norm_estimate=min(100, max(1, len(train_acts) // cfg.batch_tokens)),
    )
    t1 = time.perf_counter()
    trainer = SAETrainer(trainer_cfg, sae, batches(train_acts, cfg.batch_tokens, cfg.seed))
    # Gemma's residual stream is mostly one constant direction (at layer 6 the mean carries ~87 % of the
    # squared norm, one dimension ~50 % of the variance). Starting b_dec at the mean — in the scaled space the
    # trainer works in — keeps the encoder from spending its first steps (and most features) on that offset;
    # with b_dec at zero, 95 % of the features died.
    trainer.activation_scaler.estimate_scaling_factor(
        subject.d_model, batches(train_acts, cfg.batch_tokens, cfg.seed + 1), trainer_cfg.n_batches_for_norm_estimate)
    with torch.no_grad():
        sae.b_dec.copy_(_mean(train_acts) * trainer.activation_scaler.scaling_factor)
    sae = trainer.fit()
    train_s = time.perf_counter() - t1
    metrics = sae_metrics(sae, eval_acts)
    fired = firing_counts(sae, train_acts) + firing_counts(sae, eval_acts)
    metrics["never_fires_fraction"] = float((fired == 0).float().mean())  # over every token of the corpus
    metrics["fires_under_10_times_fraction"] = float((fired < 10).float().mean())
    metrics.update(train_tokens_seen=trainer.n_training_samples, distinct_train_tokens=len(train_acts),
                   steps=steps, collect_seconds=round(collect_s, 1), train_seconds=round(train_s, 1),
                   trainer="sae-lens " + _version("sae-lens"))
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(tmp)
    cfg.save(tmp / "saexplain_train_config.json")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log.warning("SAE saved to %s: %s", out, metrics)
    return out


def _mean(acts: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Mean over rows of a float16 tensor, in float64 chunks (no full float32 copy)."""
    total = torch.zeros(acts.shape[1], dtype=torch.float64)
    for i in range(0, len(acts), chunk):
        total += acts[i:i + chunk].double().sum(0)
    return (total / len(acts)).float()


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
