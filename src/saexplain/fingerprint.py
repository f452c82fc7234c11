"""Content fingerprints of local files and folders, for cache keys.

Keys must change when the bytes change and only then: a corpus copied afresh (new modification times, same
bytes) keeps its caches, and a retrained SAE written over the old folder gets new ones. Files up to
`FULL_HASH_BYTES` are hashed whole; larger ones (model weights) by their size plus three 1 MiB samples
(head, middle, tail), which any retraining or re-quantisation changes. Digests are memoised per process on
(path, size, mtime_ns)."""

from __future__ import annotations

import hashlib
from pathlib import Path

FULL_HASH_BYTES = 64 << 20
_SAMPLE = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        else:
            for offset in (0, st.st_size // 2, st.st_size - _SAMPLE):
                f.seek(offset)
                h.update(f.read(_SAMPLE))
    _memo[key] = h.hexdigest()
    return _memo[key]


def path_fingerprint(spec: str) -> str:
    """For a local file or folder: a hash over its files' relative names and contents; for anything else (a
    hub id names one artefact, `hf:` datasets) the spec itself."""
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        name = f.relative_to(path) if path.is_dir() else f.name
        h.update(f"{name}:{file_digest(f)}\n".encode())
    return h.hexdigest()[:16]
