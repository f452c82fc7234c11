"""A run's configs: the run's own (features, explainers, scorers, store, name) and every stage's, saved together.
A module that imports no model library, so that the CLI builds its options from these at start-up."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from saexplain.cache.config import CacheConfig
from saexplain.config import Config
from saexplain.data.contexts import CorpusConfig
from saexplain.errors import ConfigError
from saexplain.explain import EXPLAINERS
from saexplain.explain.oneshot import OneShotConfig
from saexplain.explain.saeexplainer import SAEExplainerConfig
from saexplain.explain.sage import SAGEConfig
from saexplain.llm.client import LLMConfig
from saexplain.sampling.sampler import SamplingConfig
from saexplain.score import SCORERS
from saexplain.score.classifier import DetectionConfig, FuzzingConfig
from saexplain.score.embedding import EmbeddingConfig
from saexplain.score.generative import ContrastConfig, GenerationConfig
from saexplain.score.simulation import SimulationConfig
from saexplain.score.steering import SteeringConfig
from saexplain.subject.config import SubjectConfig

# explainer name → the field of RunConfig holding its config; scorer name → likewise
EXPLAINER_CONFIG = {"oneshot": "oneshot", "logitlens": "oneshot", "oneshot+logitlens": "oneshot", "sage": "sage",
                    "saeexplainer": "saeexplainer"}
SCORER_CONFIG = {"detection": "detection", "fuzzing": "fuzzing", "simulation": "simulation",
                 "embedding": "embedding", "generation": "generation", "contrast": "contrast",
                 "steering": "steering"}


class RunConfig(Config):
    cli_name: ClassVar[str] = "run"
    features: str = Field("random:8", description="ids '3,17,40' | 'top:N' (densest) | 'random:N' (seeded, in the density band)")
    explainers: str = Field("oneshot,sage", description="explainers, comma-separated "
                            "(oneshot, logitlens, oneshot+logitlens, sage, saeexplainer; "
                            "saeexplainer@sft|round1|round2 picks a training stage)")
    scorers: str = Field("detection,embedding,generation,simulation", description="scorers, comma-separated "
                         "(detection, fuzzing, simulation, embedding, generation, contrast, steering)")
    min_density: float = Field(1e-4, ge=0, description="features chosen by top:/random: fire on at least this share of tokens")
    max_density: float = Field(1e-2, gt=0, description="… and at most this share")
    feature_seed: int = Field(0, description="seed of random:N feature choice")
    store: str | None = Field(None, description="SQLite store (default: $SAEXPLAIN_HOME/saexplain.db)")
    name: str = Field("", description="a run name: runs with different names never share explanations (the "
                      "same settings otherwise resume and extend one run)")
    run_concurrency: int | None = Field(None, ge=1, description="features in flight at once (default: 1 for an "
                                        "in-process LLM, 32 for a server; LLM requests are capped by "
                                        "--max-concurrency)")

    @property
    def explainer_names(self) -> list[str]:
        return [x.strip() for x in self.explainers.split(",") if x.strip()]

    @property
    def scorer_names(self) -> list[str]:
        return [x.strip() for x in self.scorers.split(",") if x.strip()]


@dataclass
class StageConfigs:
    """Every config a run uses, saved together."""

    run: RunConfig
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    oneshot: OneShotConfig = field(default_factory=OneShotConfig)
    sage: SAGEConfig = field(default_factory=SAGEConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    fuzzing: FuzzingConfig = field(default_factory=FuzzingConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    saeexplainer: SAEExplainerConfig = field(default_factory=SAEExplainerConfig)

    CLASSES: ClassVar[dict[str, type[Config]]] = {
        "subject": SubjectConfig, "corpus": CorpusConfig, "cache": CacheConfig, "sampling": SamplingConfig,
        "llm": LLMConfig, "oneshot": OneShotConfig, "sage": SAGEConfig, "detection": DetectionConfig,
        "fuzzing": FuzzingConfig, "simulation": SimulationConfig, "embedding": EmbeddingConfig,
        "generation": GenerationConfig, "contrast": ContrastConfig, "steering": SteeringConfig,
        "saeexplainer": SAEExplainerConfig}

    def __post_init__(self):
        for name in self.run.explainer_names:
            self.explainer(name)
        for name in self.run.scorer_names:
            SCORERS.get(name)

    def to_dict(self) -> dict[str, Any]:
        out = {"run": json.loads(self.run.to_json())}
        out.update({k: json.loads(getattr(self, k).to_json()) for k in self.CLASSES})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageConfigs:
        try:
            return cls(run=RunConfig(**d["run"]), **{k: c(**d[k]) for k, c in cls.CLASSES.items() if k in d})
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"stored run config does not load: {e}") from None

    IDENTITY: ClassVar[tuple[str, ...]] = ("subject", "corpus", "cache", "sampling", "llm", "oneshot", "sage")

    def identity(self, cache_key: str) -> str:
        """What explanations depend on: the stage configs in IDENTITY (each without its speed settings), the
        content identity of the cache they read (`cache_key`: model, SAE and corpus files included) and the run's
        name — not the feature list, the explainer/scorer lists, or speed settings."""
        ident: dict[str, Any] = {k: getattr(self, k).identity() for k in self.IDENTITY}
        ident["cache_key"] = cache_key
        if self.run.name:
            ident["name"] = self.run.name
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def explainer(self, name: str):
        """`name` or `name@variant` (a variant sets the config's `stage`, e.g. saeexplainer@sft)."""
        base, _, variant = name.partition("@")
        cls = EXPLAINERS.get(base)
        cfg = getattr(self, EXPLAINER_CONFIG[base])
        if variant:
            if "stage" not in type(cfg).model_fields:
                raise ConfigError(f"explainer {base!r} has no variants (got {name!r})")
            cfg = type(cfg).build(**{**cfg.model_dump(), "stage": variant})
        return cls(cfg)

    def scorer(self, name: str):
        return SCORERS.get(name)(getattr(self, SCORER_CONFIG[name]))
