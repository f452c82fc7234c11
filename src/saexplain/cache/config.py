"""The latent cache's config, in a module that imports no model library (the CLI reads it at start-up)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from saexplain.config import Config, Count


class CacheConfig(Config):
    cli_name: ClassVar[str] = "cache"
    speed_fields: ClassVar[frozenset[str]] = frozenset({"batch_contexts"})
    tokens: Count = Field(1_000_000, ge=1, description="tokens to cache (at most the corpus)")
    shard_contexts: int = Field(256, ge=1, description="contexts per shard file")
    batch_contexts: int = Field(16, ge=1, description="contexts per forward batch")
