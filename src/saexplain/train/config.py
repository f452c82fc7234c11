"""The SAEExplainer training config: one file per training folder (`config.json`), its fields are the options
of `saexplain train sft|pairs|dpo`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from saexplain.config import Config
from saexplain.paths import home


class TrainConfig(Config):
    cli_name: ClassVar[str] = "training"
    dir: str | None = Field(None, description="training folder (default: $SAEXPLAIN_HOME/saeexplainer/default)")
    store: str | None = Field(None, description="SQLite store holding the cache, the reference and held-out runs")
    # features
    features: str = Field("random:64", description="training features: ids '3,17' or 'random:N' (density band, "
                          "never a held-out one)")
    feature_seed: int = Field(7, description="seed of random:N")
    min_density: float = Field(1e-4, ge=0, description="random:N picks features firing on at least this share")
    max_density: float = Field(1e-2, gt=0, description="… and at most this share")
    heldout_runs: str = Field("", description="runs (ids, comma-separated) whose features are held out for "
                              "evaluation: never trained on")
    # SFT references
    references: str = Field("store", description="'store' (best-scoring explanations of --reference-run), "
                            "'top-tokens' (each feature's most frequent peak tokens, counted: a cheap warm-up on "
                            "thousands of features) or a Neuronpedia explanation export (JSON)")
    reference_run: int | None = Field(None, description="run holding explanations of the training features")
    reference_scorer: str = Field("generation", description="picks the best explanation per feature")
    # candidates and rewards
    pair_features: int = Field(0, ge=0, description="training features that get candidates and pairs in the DPO "
                               "rounds (0: all; else that many, seeded): SFT may warm up on thousands")
    dpo_features: Literal["sft", "unseen"] = Field(
        "sft", description="where the DPO rounds' pair features and reward-check features come from: 'sft' (training "
        "features, whose references SFT trained on) or 'unseen' (features of the density band that are neither "
        "training nor held-out features: new to the explainer, as the evaluation's are, so the rounds learn and "
        "the reward check measures what transfers; needs --pair-features)")
    candidates: int = Field(6, ge=2, description="candidate explanations per feature")
    candidate_temperature: float = Field(0.9, gt=0, description="sampling temperature of the candidates")
    reward_source: Literal["llm", "share", "generation", "corpus"] = Field(
        "llm", description="how a candidate is rewarded: 'llm' (the LLM writes --reward-texts texts from it, the "
        "oracle measures the feature on them; the reward is the highest activation they reach as a share of the "
        "feature's max), 'share' (the same texts; the reward is the share of them on which the feature reaches "
        "--reward-fraction × its max: the generation score's own count, so a list with one right word among wrong "
        "ones is not fully rewarded), 'generation' (the generation scorer itself: its prompt writes "
        "--reward-texts sentences, counted as 'share' does; with --reward-texts and --reward-fraction set to the "
        "evaluation's generation settings (the scorer's defaults: 10 and 0.5) a candidate's reward is the "
        "evaluation's generation score of it, so DPO optimises what the evaluation "
        "measures) or 'corpus' (no LLM call: each word it quotes is looked up in the feature's explain-pool "
        "contexts of the latent cache; the reward is the mean, over the words, of the share of their occurrences "
        "where the feature reaches --reward-fraction × its max; cheap enough for pairs on hundreds of features)")
    reward_fraction: float = Field(0.5, gt=0, le=1, description="with --reward-source share, generation or "
                                   "corpus: a text (an occurrence) counts when the feature reaches this share of "
                                   "its max there (generation's default)")
    reward_texts: int = Field(4, ge=1, description="texts the LLM writes from each candidate")
    reward_repeats: int = Field(1, ge=1, description="independent sets of texts per candidate (sampled, seeded); "
                                "the reward is their mean, and with 2 or more the round measures its reward noise "
                                "and keeps only pairs whose gap is beyond it (--min-gap-sigmas)")
    min_gap_sigmas: float = Field(2.0, ge=0, description="with --reward-repeats ≥ 2: the chosen candidate's reward "
                                  "must beat the rejected one's by this many standard errors of a difference of "
                                  "two mean rewards (the noise measured over the round's repeats)")
    min_reward: float = Field(0.1, ge=0, description="drop a feature whose best normalised reward is below")
    min_spread: float = Field(0.10, ge=0, description="drop a feature whose (best − worst) / best is ≤ this")
    pairs_per_feature: int = Field(1, ge=1, description="preference pairs a feature may give: the best candidate "
                                   "against the closest lower-half one beyond the margin, then the next distinct "
                                   "upper-half candidate against the next lower-half one, and so on (each text in "
                                   "one pair at most)")
    min_margin: float = Field(0.15, ge=0, description="rejected trails the chosen by more than this (relative)")
    greedy_rounds: str = Field("", description="rounds (comma-separated: '1,2', '2') whose candidates include "
                               "the policy's greedy explanation of each pair feature — the text the evaluation "
                               "reads —, rewarded as the sampled ones are; it takes the feature's first pair: "
                               "chosen against the closest lower-half candidate beyond the margin when it is in "
                               "the upper half (keep what works), else rejected against the best that beats it "
                               "(move away from what does not): on-policy pairs for greedy decoding")
    # LoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    lora_targets: str = Field("q_proj,k_proj,v_proj,o_proj", description="modules given adapters")
    # SFT
    sft_epochs: int = Field(3, ge=1, description="SFT epochs")
    sft_lr: float = Field(1e-4, gt=0, description="SFT learning rate")
    sft_batch: int = Field(4, ge=1, description="SFT batch size")
    # DPO (round 1 / round 2)
    dpo_preset: Literal["paper", "lora"] = Field(
        "paper", description="DPO settings: 'paper' (SAEExplainer's: 1 epoch at 5e-6 / 3e-6, no early stop) or "
        "'lora' (LoRA-typical: up to 4 epochs at 5e-5 / 3e-5, 20 % of the pairs held out, stop when their margin "
        "stops rising); an option given apart wins over its preset value")
    dpo_holdout: float | None = Field(None, ge=0, lt=1, description="share of a round's pairs (by feature) held "
                                      "out: their mean log p(chosen) − log p(rejected) after each epoch decides "
                                      "early stopping, and the best epoch's adapter is kept (0: no early stopping; "
                                      "default: the preset's)")
    dpo_check: Literal["margin", "reward"] = Field(
        "margin", description="what decides DPO's best epoch: 'margin' (the held-out pairs' mean log p(chosen) − "
        "log p(rejected), --dpo-holdout) or 'reward' (after each epoch the model's greedy explanation of each of "
        "--dpo-check-features features that no round trains on (from the --dpo-features pool) is rewarded as the "
        "round's candidates are — one greedy set of texts —, and their mean reward decides: what the explainer "
        "writes, not how it ranks texts it was given)")
    dpo_check_features: int = Field(16, ge=1, description="with --dpo-check reward: features outside the pair "
                                    "features (the next ones of the same seeded draw, from the pool --dpo-features "
                                    "names) rewarded each epoch")
    dpo_patience: int = Field(1, ge=1, description="epochs without a better held-out check before stopping")
    dpo_epochs: int | None = Field(None, ge=1, description="DPO epochs per round (default: the preset's)")
    dpo_batch: int = Field(2, ge=1, description="DPO pairs per step")
    beta1: float = Field(0.1, gt=0, description="round 1 DPO beta")
    lr1: float | None = Field(None, gt=0, description="round 1 learning rate (default: the preset's)")
    beta2: float = Field(0.15, gt=0, description="round 2 DPO beta")
    lr2: float | None = Field(None, gt=0, description="round 2 learning rate (default: the preset's)")
    max_length: int = Field(128, ge=16, description="prompt + completion tokens")
    save_steps: int = Field(8, ge=1, description="checkpoint every N optimiser steps")
    train_seed: int = Field(0, description="training seed (LoRA init, data order, candidate sampling)")
    train_device: str = Field("cpu", description="torch device of the explainer while training and writing "
                              "candidates (cuda on a GPU)")
    train_dtype: Literal["float32", "bfloat16"] = Field("float32", description="the explainer's base weights while "
                                                        "training (bfloat16 on a GPU: TRL's bf16 mixed precision)")

    @field_validator("greedy_rounds")
    @classmethod
    def _rounds(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if any(p not in ("1", "2") for p in parts):
            raise ValueError(f"rounds 1 and/or 2, comma-separated (got {v!r})")
        return ",".join(sorted(set(parts)))

    def greedy_in(self, round_: int) -> bool:
        """Whether round `round_`'s candidates include the policy's greedy explanation."""
        return str(round_) in self.greedy_rounds.split(",")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """The preset's values for the DPO settings not given (None); stored configs hold the values."""
        if not isinstance(data, dict):
            return data
        preset = DPO_PRESETS.get(data.get("dpo_preset") or "paper", DPO_PRESETS["paper"])
        return {**data, **{k: v for k, v in preset.items() if data.get(k) is None}}

    def folder(self) -> Path:
        return Path(self.dir).expanduser() if self.dir else home() / "saeexplainer" / "default"


# the named DPO settings (`--dpo-preset`); "paper" is the fields' defaults
DPO_PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"dpo_epochs": 1, "lr1": 5e-6, "lr2": 3e-6, "dpo_holdout": 0.0},
    "lora": {"dpo_epochs": 4, "lr1": 5e-5, "lr2": 3e-5, "dpo_holdout": 0.2},
}
