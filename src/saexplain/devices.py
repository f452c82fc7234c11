"""Torch devices, checked where a config names one: the subject, the in-process LLM backends and the SAEExplainer
model all use this, so no layer imports another's module for it."""

from __future__ import annotations

import torch

from saexplain.errors import ConfigError


def check_device(device: str, option: str = "--device") -> str:
    """A torch device this machine has, or one ConfigError line saying what there is instead."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {device}: this machine has no CUDA device (torch {torch.__version__}); "
                              f"use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option} {device}: MPS is not available here; use {option} cpu")
    return device
