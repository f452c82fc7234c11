"""Carry a store or a folder from one machine to another as one compressed file (`saexplain snapshot`): a long
run outlives a machine, and $SAEXPLAIN_HOME stays where it was.

- `save` copies a store with SQLite's online backup (safe while a run keeps writing to it: the copy is one
  consistent state), then gzips it; the LLM request cache goes with it, so items remade after a code change cost
  only the requests that changed. `restore` refuses to overwrite an existing store (the one on this machine may be
  newer) unless forced, and refuses a damaged snapshot (gzip or SQLite integrity check) without touching the store.
  A run resumes from the restored store: it is found by its identity (configs + the cache's key), which does not
  depend on the machine, and the latent cache is rebuilt on first use.
- `save_folder` / `restore_folder` do the same for a folder (a SAEExplainer training folder: adapters,
  candidates, pairs), leaving out lock and temp files and what `exclude` names.

Snapshots are large: keep them out of git (the repository takes no file over 2 MB)."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from saexplain.errors import SaexplainError


def save(store: Path, to: Path) -> int:
    if not store.is_file():
        raise SaexplainError(f"{store}: no such store")
    to.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        src = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        with dst:
            src.backup(dst)
        src.close()
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        dst.execute("VACUUM")
        dst.close()
        part = to.with_name(to.name + ".part")
        with open(copy, "rb") as f, gzip.open(part, "wb", compresslevel=9) as g:
            shutil.copyfileobj(f, g)
        part.replace(to)
    return to.stat().st_size


def restore(store: Path, snap: Path, force: bool) -> int:
    if not snap.is_file():
        raise SaexplainError(f"{snap}: no such snapshot")
    if store.exists() and not force:
        raise SaexplainError(f"{store} exists (it may hold newer results than {snap}): move it away or pass --force")
    part = store.with_name(store.name + ".part")
    try:
        with gzip.open(snap, "rb") as g, open(part, "wb") as f:
            shutil.copyfileobj(g, f)
    except (OSError, EOFError) as e:
        part.unlink(missing_ok=True)
        raise SaexplainError(f"{snap}: the snapshot is damaged ({e})") from None
    try:
        con = sqlite3.connect(part)
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
    except sqlite3.DatabaseError as e:
        ok = str(e)
    if ok != "ok":
        part.unlink()
        raise SaexplainError(f"{snap}: the snapshot is damaged ({ok})")
    for extra in (Path(f"{store}-wal"), Path(f"{store}-shm")):  # the replaced store's, only once the copy is good
        extra.unlink(missing_ok=True)
    part.replace(store)
    return store.stat().st_size


def save_folder(folder: Path, to: Path, exclude: tuple[str, ...] = ()) -> int:
    """tar.gz of the folder's files, leaving out lock/temp files and what `exclude` names: a file name anywhere
    (e.g. `checkpoint.pt`) or a path inside the folder with everything under it (e.g. `round1/dpo`: a finished
    round's resume checkpoints, which its adapter makes unnecessary)."""
    if not folder.is_dir():
        raise SaexplainError(f"{folder}: no such folder")
    to.parent.mkdir(parents=True, exist_ok=True)
    part = to.with_name(to.name + ".part")
    with tarfile.open(part, "w:gz", compresslevel=9) as tar:
        for path in sorted(folder.rglob("*")):  # sorted: the same folder gives the same member order
            rel = path.relative_to(folder)
            if (path.is_file() and not path.name.endswith((".lock", ".tmp")) and path.name not in exclude
                    and not any(Path(x) in (rel, *rel.parents) for x in exclude)):
                tar.add(path, arcname=str(rel), recursive=False)
    part.replace(to)
    return to.stat().st_size


def restore_folder(folder: Path, snap: Path, force: bool) -> int:
    if not snap.is_file():
        raise SaexplainError(f"{snap}: no such snapshot")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise SaexplainError(f"{folder} exists (it may hold newer results than {snap}): move it away or pass --force")
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    try:
        with tarfile.open(snap, "r:gz") as tar:
            tar.extractall(part, filter="data")  # no absolute paths, links or '..' out of the folder
    except (OSError, EOFError, tarfile.TarError) as e:
        shutil.rmtree(part, ignore_errors=True)
        raise SaexplainError(f"{snap}: the snapshot is damaged ({e})") from None
    if folder.exists():
        shutil.rmtree(folder)
    part.replace(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
