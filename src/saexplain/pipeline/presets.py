"""Settings sized for the offline default stack on 2 CPU cores (the default LLM writes about 16–20 tok/s):
`make demo` and `python -m bench explainers` use the same ones, so what the demo shows is what was measured."""

from __future__ import annotations

from saexplain.cache.config import CacheConfig
from saexplain.explain.oneshot import OneShotConfig
from saexplain.explain.saeexplainer import SAEExplainerConfig
from saexplain.explain.sage import SAGEConfig
from saexplain.llm import LLMConfig
from saexplain.pipeline.runner import RunConfig, StageConfigs
from saexplain.score.classifier import DetectionConfig
from saexplain.score.generative import GenerationConfig
from saexplain.score.simulation import SimulationConfig


def cpu_preset(features: str, explainers: str, scorers: str, tokens: int, feature_seed: int = 0,
               llm: str = "default", store: str | None = None, name: str = "",
               saeexplainer: SAEExplainerConfig | None = None) -> StageConfigs:
    return StageConfigs(
        run=RunConfig(features=features, explainers=explainers, scorers=scorers, feature_seed=feature_seed,
                      store=store, name=name),
        cache=CacheConfig(tokens=tokens),
        llm=LLMConfig(llm=llm),
        oneshot=OneShotConfig(examples=8, window=20),
        # a modest SAGE: 3 hypotheses + a negative case, 2 probes each, one rewrite round at most; the conclusion
        # (redone once when it breaks the rules) and the measured selection (one short call per candidate) within
        # 8k LLM tokens, which is the budget that binds
        sage=SAGEConfig(exemplars=8, window=20, max_rounds=2, max_llm_calls=16, max_tokens=8000, max_seconds=300),
        detection=DetectionConfig(activating=5, random_negatives=2, hard_negatives=2),
        simulation=SimulationConfig(high=1, medium=1, low=1, tokens=16),
        generation=GenerationConfig(sentences=8),
        saeexplainer=saeexplainer or SAEExplainerConfig(),
    )
