"""Start llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (tests and benchmarks use it)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from saexplain.llm.base import LLMError
from saexplain.net import free_port


def start_llama_server(model: str | Path, log_path: str | Path, n_ctx: int = 2048, threads: int | None = None,
                       timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """(process, base URL `http://127.0.0.1:<port>/v1`) once /v1/models answers. The server's output goes to
    `log_path` (a file, not a pipe: llama.cpp is chatty and a full pipe would block it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port",
           str(port), "--n_ctx", str(n_ctx), "--logits_all", "true"]
    if threads:
        cmd += ["--n_threads", str(threads)]
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                tail = Path(log_path).read_text()[-300:].replace("\n", " ")
                raise LLMError(f"llama.cpp server did not start within {timeout:.0f}s: {tail}") from None
            time.sleep(0.5)
