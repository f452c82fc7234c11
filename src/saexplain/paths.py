"""Where saexplain keeps converted models, trained SAEs and run stores."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`$SAEXPLAIN_HOME`, default `~/.cache/saexplain` (created on first use)."""
    root = Path(os.environ.get("SAEXPLAIN_HOME") or Path.home() / ".cache" / "saexplain").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
