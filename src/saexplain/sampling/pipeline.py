"""`saexplain sample`: draw and store the explain / score pools of chosen features of a cache run."""

from __future__ import annotations

import json

from saexplain.cache.pipeline import CacheRun
from saexplain.errors import SaexplainError
from saexplain.sampling.sampler import Example, Sampler, SamplingConfig
from saexplain.store import Store


def sample_features(run: CacheRun, features: list[int], cfg: SamplingConfig, store: Store,
                    progress: bool = False) -> tuple[int, dict[int, list[Example]]]:
    """Returns the sampling run id and each feature's examples (stored as references into the cache)."""
    bad = [f for f in features if not 0 <= f < run.cache.d_sae]
    if bad:
        raise SaexplainError(f"unknown feature id {bad[0]}: the SAE has {run.cache.d_sae} features")
    config = {"cache_run": run.run_id, "sampling": json.loads(cfg.to_json())}
    text = json.dumps(config, sort_keys=True)
    run_id = store.get_or_create_run("sample", cfg.hash() + f"-cache{run.run_id}", text)
    sampler = Sampler(run.contexts.tokens, cfg)
    out = {}
    for f, (ctx, pos, val) in run.cache.collect(features, progress=progress).items():
        examples = sampler.sample(f, ctx, pos, val)
        store.put_examples(run_id, f, [e.row() for e in examples])
        out[f] = examples
    return run_id, out
