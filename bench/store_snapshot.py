"""Carry a benchmark's store from one machine to the next: a long benchmark (bench/explainers.py at 60 features is
about 3.3 h on 2 cores) outlives a session, and $SAEXPLAIN_HOME does not travel.

    .venv/bin/python bench/store_snapshot.py save    [--store $SAEXPLAIN_HOME/bench.db] [--to FILE]
    .venv/bin/python bench/store_snapshot.py restore [--store $SAEXPLAIN_HOME/bench.db] [--to FILE]

The default FILE is $SAEXPLAIN_HOME/snapshots/bench.db.gz. Snapshots are not committed: the repository takes no
file over 2 MB (tests/test_repository.py) and `bench/state/` is ignored; copy a snapshot the way you copy any
large file. The snapshots the SAEExplainer study and the explainer benchmark used until commit 15f6447 stay in
git history: `git show 15f6447:bench/state/bench.db.gz > bench.db.gz` (the same for the `saeexplainer*.tar.gz`
folders listed by `git ls-tree 15f6447 bench/state/`).

`save` copies the store with SQLite's online backup (safe while the benchmark keeps writing to it: the copy is one
consistent state), then gzips it; the LLM request cache goes with it, so features remade after a code change cost
only the requests that changed. `restore` refuses to overwrite an existing store (the one on this machine may be
newer) unless --force. The benchmark then resumes from the restored store: its run is found by the run's identity
(configs + the cache's key), which does not depend on the machine, and the latent cache is rebuilt on first use.

A folder goes the same way (bench/saeexplainer.py's training folder: LoRA adapters, candidates, pairs — a few MB),
saved while its benchmark is stopped; `--exclude checkpoint.pt` leaves out the resume checkpoints (optimizer state)
of stages whose adapter is written:

    .venv/bin/python bench/store_snapshot.py save    --folder $SAEXPLAIN_HOME/saeexplainer/bench --to FILE.tar.gz [--exclude checkpoint.pt] [--exclude round1/dpo]
    .venv/bin/python bench/store_snapshot.py restore --folder $SAEXPLAIN_HOME/saeexplainer/bench --to FILE.tar.gz

Prints `snapshot: <path> <bytes>` at the end."""

from __future__ import annotations

import argparse
import gzip
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from saexplain.paths import home


def save(store: Path, to: Path) -> int:
    if not store.is_file():
        raise SystemExit(f"{store}: no such store")
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
        raise SystemExit(f"{snap}: no such snapshot")
    if store.exists() and not force:
        raise SystemExit(f"{store} exists (it may hold newer results than {snap}): move it away or pass --force")
    part = store.with_name(store.name + ".part")
    try:
        with gzip.open(snap, "rb") as g, open(part, "wb") as f:
            shutil.copyfileobj(g, f)
    except (OSError, EOFError) as e:
        part.unlink(missing_ok=True)
        raise SystemExit(f"{snap}: the snapshot is damaged ({e})") from None
    try:
        con = sqlite3.connect(part)
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
    except sqlite3.DatabaseError as e:
        ok = str(e)
    if ok != "ok":
        part.unlink()
        raise SystemExit(f"{snap}: the snapshot is damaged ({ok})")
    for extra in (Path(f"{store}-wal"), Path(f"{store}-shm")):  # the replaced store's, only once the copy is good
        extra.unlink(missing_ok=True)
    part.replace(store)
    return store.stat().st_size


def save_folder(folder: Path, to: Path, exclude: tuple[str, ...] = ()) -> int:
    """tar.gz of the folder's files, leaving out lock/temp files and what `exclude` names: a file name anywhere
    (e.g. `checkpoint.pt`) or a path inside the folder with everything under it (e.g. `round1/dpo`: a finished
    round's resume checkpoints, which its adapter makes unnecessary)."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such folder")
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
        raise SystemExit(f"{snap}: no such snapshot")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise SystemExit(f"{folder} exists (it may hold newer results than {snap}): move it away or pass --force")
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    try:
        with tarfile.open(snap, "r:gz") as tar:
            tar.extractall(part, filter="data")  # no absolute paths, links or '..' out of the folder
    except (OSError, EOFError, tarfile.TarError) as e:
        shutil.rmtree(part, ignore_errors=True)
        raise SystemExit(f"{snap}: the snapshot is damaged ({e})") from None
    if folder.exists():
        shutil.rmtree(folder)
    part.replace(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("--store", default=None, help="the store (default: $SAEXPLAIN_HOME/bench.db)")
    ap.add_argument("--folder", default=None, help="carry this folder (tar.gz) instead of a store")
    ap.add_argument("--to", default=None, help="the snapshot file (default: $SAEXPLAIN_HOME/snapshots/bench.db.gz for the store)")
    ap.add_argument("--force", action="store_true", help="restore over an existing store")
    ap.add_argument("--exclude", action="append", default=[], metavar="NAME",
                    help="with --folder save: leave out files of this name or this path inside the folder "
                    "(repeatable), e.g. checkpoint.pt or round1/dpo")
    args = ap.parse_args()
    store = Path(args.store) if args.store else home() / "bench.db"
    if args.folder:
        if not args.to:
            raise SystemExit("--folder: give --to too (the snapshot file, "
                             "e.g. $SAEXPLAIN_HOME/snapshots/saeexplainer.tar.gz)")
        folder, snap = Path(args.folder), Path(args.to)
        if args.action == "save":
            print(f"snapshot: {snap} {save_folder(folder, snap, tuple(args.exclude))}")
        else:
            print(f"snapshot: {snap} restored to {folder} ({restore_folder(folder, snap, args.force)} bytes)")
        return
    snap = Path(args.to) if args.to else home() / "snapshots" / "bench.db.gz"
    if args.action == "save":
        size = save(store, snap)
        print(f"snapshot: {snap} {size}")
    else:
        size = restore(store, snap, args.force)
        print(f"snapshot: {snap} restored to {store} ({size} bytes)")


if __name__ == "__main__":
    main()
