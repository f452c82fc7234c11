"""`saexplain serve` as a child process on 127.0.0.1: what `saexplain demo`, `python -m bench web`, the screenshot script
and the browser tests start. Imports no web framework (the child does)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

from saexplain.errors import SaexplainError
from saexplain.net import free_port


class ServerProcess:
    """`with ServerProcess(store) as srv:` — a running server at `srv.url` (ready unless `wait=False`), stopped
    on exit."""

    def __init__(self, store: str | Path, port: int = 0, probe: bool = True, wait: bool = True,
                 timeout: float = 120.0):
        self.store, self.port, self.probe, self.wait, self.timeout = Path(store), free_port(port), probe, wait, timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        cmd = [sys.executable, "-m", "saexplain.cli", "serve", "--store", str(self.store), "--port", str(self.port)]
        self._err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a long-lived child never blocks on it
        self.proc = subprocess.Popen(cmd + ([] if self.probe else ["--no-probe"]), stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        if self.wait:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/runs", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self._err.seek(0)
                    err = self._err.read().strip().splitlines()
                    raise SaexplainError(f"saexplain serve did not start on {self.url}: "
                                         f"{err[-1] if err else 'no answer'}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def serve_until_interrupted(self) -> None:
        try:
            self.proc.wait()
        except KeyboardInterrupt:
            pass

    def __exit__(self, *exc) -> None:
        self.stop()
