"""SFT warm-up of the explainer model on reference explanations (a PEFT LoRA adapter, loss on the completion
only, the feature's decoder vector injected at the placeholder). Checkpoints every `save_steps` steps (adapter
weights, optimiser, step, RNG state; written atomically): a killed run resumes where it stopped and ends with
the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from saexplain.explain.saeexplainer import ExplainerLM
from saexplain.train.config import TrainConfig


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=[t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
                      task_type="CAUSAL_LM")


def collate(lm: ExplainerLM, rows: Sequence[dict], max_length: int) -> dict[str, torch.Tensor]:
    """prompt + " completion" + EOS, right-padded; labels only on the completion (and EOS)."""
    tok = lm.tokenizer
    seqs, labels = [], []
    for r in rows:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[:max_length]
        seqs.append(ids)
        labels.append(([-100] * len(p) + c)[:max_length])
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    out = {"input_ids": torch.full((len(seqs), width), pad, dtype=torch.long),
           "attention_mask": torch.zeros((len(seqs), width), dtype=torch.long),
           "labels": torch.full((len(seqs), width), -100, dtype=torch.long)}
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        out["input_ids"][i, :len(s)] = torch.tensor(s)
        out["attention_mask"][i, :len(s)] = 1
        out["labels"][i, :len(lab)] = torch.tensor(lab)
    return out


def train_sft(lm: ExplainerLM, rows: Sequence[dict], vectors: dict[int, torch.Tensor] | None, cfg: TrainConfig,
              out: Path, on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """rows: {"feature", "prompt", "completion"}. Returns the adapter folder (out/adapter)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if not rows:
        raise ValueError("SFT has no reference explanations to train on")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train_seed)
    model = get_peft_model(lm.model, lora_config(cfg))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr)
    per_epoch = math.ceil(len(rows) / cfg.sft_batch)
    total = per_epoch * cfg.sft_epochs
    ckpt, step = out / "checkpoint.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
    model.train()
    log = open(out / "log.jsonl", "a")
    try:
        while step < total:
            epoch, i = divmod(step, per_epoch)
            order = np.random.default_rng(cfg.train_seed + epoch).permutation(len(rows))
            batch_rows = [rows[j] for j in order[i * cfg.sft_batch:(i + 1) * cfg.sft_batch]]
            batch = {k: v.to(model.device) for k, v in collate(lm, batch_rows, cfg.max_length).items()}
            if vectors is not None:
                lm.injector.vectors = torch.stack([vectors[r["feature"]] for r in batch_rows])
            try:
                loss = model(**batch).loss
            finally:
                lm.injector.vectors = None
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            loss_value = loss.item()
            log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss_value}) + "\n")
            log.flush()
            if step % cfg.save_steps == 0 or step == total:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": opt.state_dict(),
                            "step": step, "rng": torch.get_rng_state()}, tmp)
                os.replace(tmp, ckpt)
            if on_step:
                on_step(step, total, loss_value)
    finally:
        log.close()
    model.eval()
    adapter = out / "adapter"
    tmp_dir = out / "adapter.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model.save_pretrained(str(tmp_dir))
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp_dir, adapter)
    return adapter
