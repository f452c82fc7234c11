"""DPO rounds with TRL's DPOTrainer and a fresh PEFT LoRA adapter on the merged previous stage (round 1 on
SFT, round 2 on SFT + round 1): with adapters disabled the model *is* the previous stage, so the reference is
exactly the SFT model (round 1) or the round-1 model (round 2) without a second copy in memory.

TRL knows nothing of injection: the pairs keep their feature ids through the collator, and the loss sets the
injector's vectors for the batch (rows are [chosen…, rejected…], so the vectors are repeated twice).
Checkpoints are TRL/transformers' own (`checkpoint-N` under out/dpo): a rerun resumes from the last."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from saexplain.explain.saeexplainer import ExplainerLM
from saexplain.train.config import TrainConfig
from saexplain.train.sft import collate, lora_config


class _KeepFeature:
    """Wraps TRL's collator: the batch also carries the feature id of each pair."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        out = self.inner(examples)
        out["feature"] = torch.tensor([int(e["feature"]) for e in examples])
        return out


def _trainer_class():
    from trl import DPOTrainer

    class InjectedDPOTrainer(DPOTrainer):
        def __init__(self, *args, injector, vectors: dict[int, torch.Tensor] | None, **kwargs):
            super().__init__(*args, **kwargs)
            self.injector, self.vectors = injector, vectors
            self.data_collator = _KeepFeature(self.data_collator)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "feature" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "feature"]

        def _compute_loss(self, model, inputs, return_outputs):
            features = inputs.pop("feature")
            if self.vectors is not None:
                v = torch.stack([self.vectors[int(f)] for f in features])
                self.injector.vectors = torch.cat([v, v])  # chosen rows, then rejected rows
            try:
                return super()._compute_loss(model, inputs, return_outputs)
            finally:
                self.injector.vectors = None

    return InjectedDPOTrainer


def dpo_args(cfg: TrainConfig, round_: int, out: Path, **overrides):
    from trl import DPOConfig

    beta, lr = (cfg.beta1, cfg.lr1) if round_ == 1 else (cfg.beta2, cfg.lr2)
    kw = dict(output_dir=str(out / "dpo"), per_device_train_batch_size=cfg.dpo_batch, learning_rate=lr, beta=beta,
              num_train_epochs=cfg.dpo_epochs, max_length=cfg.max_length, save_strategy="steps",
              save_steps=cfg.save_steps, logging_steps=1, report_to="none", bf16=cfg.train_dtype == "bfloat16",
              use_cpu=cfg.train_device == "cpu",
              gradient_checkpointing=False, seed=cfg.train_seed, disable_tqdm=True, save_total_limit=2,
              dataloader_pin_memory=torch.cuda.is_available())
    kw.update(overrides)
    return DPOConfig(**kw)


def split_holdout(pairs, share: float, seed: int):
    """(training pairs, held-out rows): `share` of the features' pairs held out (seeded), none when `share` is 0 or
    there are fewer than 2 features."""
    features = sorted(set(pairs["feature"]))
    if share <= 0 or len(features) < 2:
        return pairs, []
    n = min(len(features) - 1, max(1, round(share * len(features))))
    held = {int(f) for f in np.random.default_rng(seed).permutation(features)[:n]}
    return pairs.filter(lambda r: r["feature"] not in held), [r for r in pairs if r["feature"] in held]


def _early_stop_class():
    from transformers import TrainerCallback

    class EarlyStop(TrainerCallback):
        """After each epoch: the check (`measure(model)` → {"value": …, …}, the model in eval mode) — the
        held-out pairs' mean log p(chosen) − log p(rejected), or the check features' mean reward; the best epoch's
        adapter is saved (epoch 0 = the previous stage: a zero adapter) and training stops after `patience` epochs
        without a better value. Its state is a file, so a resumed round continues the same decision; each epoch's
        entry holds the value under `key` and the measure's other fields (the check's texts and rewards)."""

        def __init__(self, measure, key: str, patience: int, out: Path, extra: dict):
            self.measure, self.key, self.patience = measure, key, patience
            self.path, self.best_dir = out / "early_stop.json", out / "best_adapter"
            self.s = json.loads(self.path.read_text()) if self.path.is_file() else {"epochs": [], "bad": 0}
            self.extra = extra

        def _measure(self, model) -> dict:
            was = model.training
            model.eval()
            try:
                got = self.measure(model)
            finally:
                model.train(was)
            return {self.key: got.pop("value"), **got}

        def _save(self) -> None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.s, indent=1))
            os.replace(tmp, self.path)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if "best" not in self.s:  # before the first step: the reference's value, and its (zero) adapter
                m = self._measure(model)
                self.s.update(best=m[self.key], best_epoch=0, check=self.key, **self.extra)
                self.s["epochs"].append({"epoch": 0, **m})
                model.save_pretrained(str(self.best_dir))
                self._save()

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            epoch = round(state.epoch)
            if any(e["epoch"] == epoch for e in self.s["epochs"]):
                return
            m = self._measure(model)
            self.s["epochs"].append({"epoch": epoch, **m, "step": state.global_step})
            if m[self.key] > self.s["best"]:
                self.s.update(best=m[self.key], best_epoch=epoch, bad=0)
                model.save_pretrained(str(self.best_dir))
            else:
                self.s["bad"] += 1
                if self.s["bad"] >= self.patience:
                    control.should_training_stop = True
                    self.s["stopped_after_epoch"] = epoch
            self._save()

    return EarlyStop


def train_dpo(lm: ExplainerLM, pairs, vectors: dict[int, torch.Tensor] | None, cfg: TrainConfig, round_: int,
              out: Path, check: Callable[[ExplainerLM], dict] | None = None, **arg_overrides) -> Path:
    """pairs: a HF Dataset (prompt, chosen, rejected, feature). Returns the adapter folder (out/adapter). With
    `dpo_holdout`, a share of the features' pairs is held out; with `check` (`lm` → {"value": …, …}: the reward
    check, `dpo_check` 'reward'), it decides instead of those pairs' margin. Either way the best epoch's adapter is
    kept (out/early_stop.json says which and why)."""
    from transformers.trainer_utils import get_last_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    ds = pairs.select_columns(["prompt", "chosen", "rejected", "feature"])
    ds, held = split_holdout(ds, cfg.dpo_holdout, cfg.train_seed + round_)
    args = dpo_args(cfg, round_, out, **arg_overrides)
    extra = {"heldout_pairs": len(held)}

    def margin() -> float:
        return float(np.mean(pair_margins(lm, held, vectors, cfg.max_length)))

    if check is not None:  # the reward check decides; held-out pairs' margin, if any, is recorded beside it
        measure, key = (lambda model: {**check(lm), **({"heldout_margin": margin()} if held else {})}), "check_reward"
    elif held:
        measure, key = (lambda model: {"value": margin()}), "heldout_margin"
    else:
        measure = key = None
    callbacks = [_early_stop_class()(measure, key, cfg.dpo_patience, out, extra)] if measure else []
    trainer = _trainer_class()(model=lm.model, args=args, train_dataset=ds, processing_class=lm.tokenizer,
                               peft_config=lora_config(cfg), injector=lm.injector, vectors=vectors,
                               callbacks=callbacks)
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    (out / "dpo_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    adapter, tmp = out / "adapter", out / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if callbacks:
        shutil.copytree(out / "best_adapter", tmp)
    else:
        trainer.model.save_pretrained(str(tmp))
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp, adapter)
    return adapter


def pair_margins(lm: ExplainerLM, rows, vectors: dict[int, torch.Tensor] | None, max_length: int) -> list[float]:
    """Per pair: log p(chosen) − log p(rejected) given the prompt (and the feature's injected vector), summed
    over the completion tokens and EOS. DPO's implicit reward margin is β × (this under the policy − this under
    the reference), so the mean before and after a round says whether the round learnt its pairs."""
    out = []
    for r in rows:
        batch = collate(lm, [{"prompt": r["prompt"], "completion": r["chosen"]},
                             {"prompt": r["prompt"], "completion": r["rejected"]}], max_length)
        if vectors is not None:
            lm.injector.vectors = torch.stack([vectors[r["feature"]]] * 2)
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        finally:
            lm.injector.vectors = None
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        tok = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * (labels != -100)
        s = tok.sum(-1)
        out.append(float(s[0] - s[1]))
    return out
