"""Hookpoint names → (block index, pre/post). Accepts `layers.6`, `model.layers.6` and SAELens names
such as `blocks.6.hook_resid_post` / `blocks.6.hook_resid_pre`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saexplain.errors import ConfigError

_PATTERNS = [
    (re.compile(r"^(?:model\.)*(?:language_model\.)?layers[._](\d+)$"), "post"),
    (re.compile(r"^(?:transformer\.)?h\.(\d+)$"), "post"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), "post"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), "pre"),
]


@dataclass(frozen=True)
class Hookpoint:
    """The residual stream at the output ("post") or the input ("pre") of block `layer`."""

    layer: int
    position: str  # "post" | "pre"

    @classmethod
    def parse(cls, name: str) -> Hookpoint:
        for pattern, position in _PATTERNS:
            m = pattern.match(name.strip())
            if m:
                return cls(int(m.group(1)), position)
        raise ConfigError(
            f"hookpoint {name!r} not understood: use 'layers.N' or 'blocks.N.hook_resid_post' / "
            "'blocks.N.hook_resid_pre' (residual stream)"
        )

    @property
    def saelens_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_{self.position}"

    @property
    def last_block(self) -> int:
        """Index of the last block the forward has to run (−1: only the embeddings)."""
        return self.layer if self.position == "post" else self.layer - 1

    def same_stream(self, other: Hookpoint) -> bool:
        """`blocks.6.hook_resid_post` and `blocks.7.hook_resid_pre` are the same tensor."""
        return self.last_block == other.last_block
