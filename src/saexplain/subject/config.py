"""The subject's configs (model + SAE + hookpoint; the default SAE's training), in a module that imports no
model library: the CLI builds its options from them at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from saexplain.config import Config, Count
from saexplain.paths import home


class SubjectConfig(Config):
    """Which model, SAE and hookpoint the oracle runs; saved with every run."""

    cli_name: ClassVar[str] = "subject"
    speed_fields: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})
    model: str = Field("default", description="HF id, local folder, .gguf file, or 'default' (Gemma 3 270M)")
    sae: str = Field("default", description="SAELens/sparsify folder, sae_lens:<release>:<sae_id>, or 'default'")
    hookpoint: str | None = Field(None, description="e.g. layers.6 or blocks.6.hook_resid_post; default: the SAE's")
    device: str = Field("cpu", description="torch device")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model dtype")
    batch_size: int = Field(32, ge=1, description="texts per forward batch")
    top_k: int = Field(32, ge=1, description="features kept per token when none are requested (non-TopK SAEs)")


class TrainSAEConfig(Config):
    cli_name: ClassVar[str] = "train"
    model: str = Field("default", description="subject model (HF id, folder, .gguf or 'default')")
    hookpoint: str = Field("blocks.6.hook_resid_post", description="residual-stream hookpoint")
    corpus: list[str] = Field(default_factory=list,
                              description="corpus files/folders (default: the texts shipped with saexplain)")
    context: int = Field(128, ge=8, description="tokens per context (BOS first)")
    max_corpus_tokens: Count = Field(2_000_000, description="cap on distinct tokens of activations held in RAM")
    tokens: Count = Field(2_500_000, description="training tokens seen (passes repeat the activations)")
    d_sae: int = Field(4096, description="number of SAE features")
    k: int = Field(32, description="active features per token (TopK)")
    lr: float = Field(1e-3, description="Adam learning rate")
    batch_tokens: int = Field(1024, description="tokens per training step")
    aux_loss_coefficient: float = Field(1.0, description="weight of the AuxK loss that revives dead features")
    dead_window_steps: int = Field(100, ge=1, description="steps without firing before AuxK treats a feature as dead")
    eval_fraction: float = Field(0.05, description="held-out share of contexts for the metrics")
    seed: int = Field(0)
    out: str | None = Field(None, description="output folder (default: $SAEXPLAIN_HOME/saes/<model>/<hookpoint>-topk)")

    def output_dir(self) -> Path:
        """Where the SAE goes: `out`, the default SAE's folder for the default stack, else one per model."""
        if self.out:
            return Path(self.out).expanduser()
        from saexplain.subject.default import DEFAULT_HOOKPOINT
        from saexplain.subject.sae import default_sae_dir

        if self.model == "default" and self.hookpoint == DEFAULT_HOOKPOINT:
            return default_sae_dir()
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model.strip("/"))[-80:]
        return home() / "saes" / slug / f"{self.hookpoint}-topk"
