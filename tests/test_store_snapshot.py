"""store/snapshot.py (`saexplain snapshot`): a store copied while a writer keeps writing, carried as one gzip file
and restored; a folder likewise."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saexplain.cli import app
from saexplain.errors import SaexplainError
from saexplain.store import Store
from saexplain.store import snapshot as snapshot_module


@pytest.fixture(scope="module")
def snapshot():
    return snapshot_module


def test_save_while_writing_then_restore(tmp_path, snapshot):
    src = tmp_path / "bench.db"
    with Store(src) as db:
        run = db.get_or_create_run("run", "abc", "{}")
        db.llm_cache_put("k1", "llama", "m", {"text": "one"})
        # a write transaction left open by the running benchmark: the copy holds the committed state only
        db.conn.execute("BEGIN IMMEDIATE")
        db.conn.execute("INSERT INTO llm_cache (key, backend, model, response, created) VALUES ('k2','b','m','{}',0)")
        snap = tmp_path / "state" / "bench.db.gz"
        assert snapshot.save(src, snap) == snap.stat().st_size
        db.conn.execute("COMMIT")
    dst = tmp_path / "other-home" / "bench.db"
    dst.parent.mkdir()
    snapshot.restore(dst, snap, force=False)
    with Store(dst, readonly=True) as db:
        assert db.find_run("run", "abc") == run
        assert db.llm_cache_get("k1") is not None
        assert db.llm_cache_get("k2") is None
    assert not Path(f"{dst}-wal").exists() or Path(f"{dst}-wal").stat().st_size == 0


def test_restore_keeps_an_existing_store_and_refuses_a_damaged_snapshot(tmp_path, snapshot):
    src = tmp_path / "bench.db"
    with Store(src) as db:
        db.get_or_create_run("run", "abc", "{}")
    snap = tmp_path / "bench.db.gz"
    snapshot.save(src, snap)
    with pytest.raises(SaexplainError, match="exists"):
        snapshot.restore(src, snap, force=False)
    bad = tmp_path / "bad.db.gz"
    raw = gzip.decompress(snap.read_bytes())
    bad.write_bytes(gzip.compress(raw[:4096] + b"\x00" * 512 + raw[4608:]))
    dst = tmp_path / "new.db"
    with pytest.raises(SaexplainError, match="bad.db.gz"):
        snapshot.restore(dst, bad, force=False)
    assert not dst.exists()


def test_a_folder_travels_whole_and_an_existing_one_is_kept(tmp_path, snapshot):
    src = tmp_path / "train"
    (src / "sft" / "adapter").mkdir(parents=True)
    (src / "sft" / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 40)
    (src / "round1").mkdir()
    (src / "round1" / "candidates.jsonl").write_text('{"feature": 3}\n')
    snap = tmp_path / "state" / "train.tar.gz"
    snapshot.save_folder(src, snap)
    dst = tmp_path / "home" / "train"
    dst.parent.mkdir()
    snapshot.restore_folder(dst, snap, force=False)
    assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == sorted(p.relative_to(src) for p in src.rglob("*"))
    assert (dst / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() == bytes(range(256)) * 40
    (dst / "round2").mkdir()
    with pytest.raises(SaexplainError, match="exists"):
        snapshot.restore_folder(dst, snap, force=False)
    assert (dst / "round2").is_dir()
    snap.write_bytes(snap.read_bytes()[:100])
    with pytest.raises(SaexplainError, match="damaged"):
        snapshot.restore_folder(tmp_path / "other", snap, force=False)
    assert not (tmp_path / "other").exists()


def test_a_folder_snapshot_leaves_out_the_excluded_names_and_paths_only(tmp_path, snapshot):
    src = tmp_path / "train"
    (src / "sft" / "adapter").mkdir(parents=True)
    (src / "sft" / "adapter" / "adapter_config.json").write_text("{}")
    (src / "sft" / "checkpoint.pt").write_bytes(b"optimizer state")
    (src / "sft" / "log.jsonl").write_text("{}\n")
    (src / "round1" / "dpo" / "checkpoint-8").mkdir(parents=True)
    (src / "round1" / "dpo" / "checkpoint-8" / "adapter_config.json").write_text("{}")
    (src / "round1" / "dpo_log.json").write_text("[]")
    snap = tmp_path / "train.tar.gz"
    snapshot.save_folder(src, snap, exclude=("checkpoint.pt", "round1/dpo"))
    dst = tmp_path / "restored"
    snapshot.restore_folder(dst, snap, force=False)
    # a name anywhere, or a path with everything under it; a sibling sharing the path's prefix stays
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == [
        "round1/dpo_log.json", "sft/adapter/adapter_config.json", "sft/log.jsonl"]


def test_the_cli_carries_a_store_and_refuses_to_overwrite_one(tmp_path):
    src = tmp_path / "a.db"
    with Store(src) as db:
        db.llm_cache_put("k1", "llama", "m", {"text": "one"})
    snap = tmp_path / "a.db.gz"
    res = CliRunner().invoke(app, ["snapshot", "save", "--store", str(src), "--to", str(snap)])
    assert res.exit_code == 0 and snap.is_file(), res.output
    res = CliRunner().invoke(app, ["snapshot", "restore", "--store", str(src), "--to", str(snap)])
    assert res.exit_code == 2 and "exists" in res.output and "Traceback" not in res.output
    dst = tmp_path / "b.db"
    res = CliRunner().invoke(app, ["snapshot", "restore", "--store", str(dst), "--to", str(snap)])
    assert res.exit_code == 0, res.output
    with Store(dst, readonly=True) as db:
        assert db.llm_cache_get("k1") is not None
    res = CliRunner().invoke(app, ["snapshot", "copy", "--store", str(dst)])
    assert res.exit_code == 2 and "unknown action 'copy'" in res.output
