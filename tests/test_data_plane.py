"""Corpus contexts, latent cache, sampling and the SQLite store on the tiny real model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TEST_DATA
from saexplain.cache.latents import CacheConfig, LatentCache
from saexplain.cache.pipeline import build_cache
from saexplain.data.contexts import CorpusConfig, build_contexts
from saexplain.errors import SaexplainError
from saexplain.sampling.sampler import Sampler, SamplingConfig, pool_of
from saexplain.store import Store
from saexplain.store.db import SCHEMA_VERSION
from saexplain.subject.oracle import Oracle, SubjectConfig

CONTEXT = 48


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tales.txt"
    path.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[20_000:60_000])
    return path


@pytest.fixture(scope="module")
def oracle(tiny_model_dir, sae_folders):
    return Oracle.from_config(SubjectConfig(model=str(tiny_model_dir), sae=str(sae_folders["topk"])))


def dense_reference(oracle: Oracle, tokens: np.ndarray) -> np.ndarray:
    """[n_ctx, L, d_sae] from the truncated forward + sae-lens's own dense encode; BOS row zeroed."""
    with torch.no_grad():
        h = oracle.subject.hidden(torch.from_numpy(np.asarray(tokens, np.int64)))
        acts = oracle.sae.encode(h.reshape(-1, h.shape[-1])).reshape(*tokens.shape, -1).numpy()
    acts[:, 0] = 0
    return acts


def dense_from_cache(cache: LatentCache) -> np.ndarray:
    out = np.zeros((cache.n_contexts, cache.context, cache.d_sae), np.float32)
    for s in cache.shards():
        tok = s.token_index
        out[s.start + tok // cache.context, tok % cache.context, s.indices.astype(np.int64)] = s.values
    return out


def test_contexts_keep_sources_and_are_stored_once(oracle, corpus_file):
    cfg = CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT)
    ctx = build_contexts(cfg, oracle.subject.tokenizer)
    assert ctx.tokens.shape[1] == CONTEXT and (np.asarray(ctx.tokens[:, 0]) == oracle.subject.tokenizer.bos_token_id).all()
    strings, sources = ctx.window(3, 1, CONTEXT)
    text = "".join(strings)
    assert text.replace("\n\n", " ").strip()[:30] in corpus_file.read_text().replace("\n\n", " ").replace("\n", " ")
    assert all(s.startswith("tales.txt:") for s in sources)
    again = build_contexts(cfg, oracle.subject.tokenizer)
    assert again.path == ctx.path  # reused, not rebuilt


def test_cache_round_trips_exactly_and_matches_a_dense_reference(oracle, corpus_file, tmp_path):
    ctx = build_contexts(CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), oracle.subject.tokenizer)
    cfg = CacheConfig(tokens=40 * CONTEXT, shard_contexts=8, batch_contexts=3)
    cache = LatentCache.build(oracle, ctx, cfg, tmp_path / "c", {"test": 1}, progress=False)
    assert cache.n_contexts == 40 and len(cache.shard_paths()) == 5
    got = dense_from_cache(cache)
    want = dense_reference(oracle, ctx.tokens[:40])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # exact: the stored values are the oracle's, bit for bit
    c, i, v = oracle.codes(torch.from_numpy(np.asarray(ctx.tokens[8:16], np.int64)))
    shard = list(cache.shards())[1]
    np.testing.assert_array_equal(shard.counts, c.numpy())
    np.testing.assert_array_equal(shard.indices, i.numpy())
    np.testing.assert_array_equal(shard.values, v.numpy())
    assert cache.storage()["bytes_per_nonzero"] <= 8


def test_feature_statistics_match_brute_force(oracle, corpus_file, tmp_path):
    ctx = build_contexts(CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), oracle.subject.tokenizer)
    cache = LatentCache.build(oracle, ctx, CacheConfig(tokens=30 * CONTEXT, shard_contexts=7), tmp_path / "c",
                              {}, progress=False)
    dense = dense_from_cache(cache)[:, 1:].reshape(-1, cache.d_sae)  # text tokens only
    stats = cache.statistics()
    for row in stats:
        col = dense[:, row["feature"]]
        nz = col[col > 0]
        assert row["max_act"] == pytest.approx(col.max())
        assert row["frequency"] == pytest.approx(len(nz) / len(col))
        assert row["mean_nonzero"] == pytest.approx(nz.mean() if len(nz) else 0.0, rel=1e-5)
        assert row["dead"] == (len(nz) == 0)
        assert sum(row["histogram"]["counts"]) == len(nz)
    top = cache.top_activations(5)
    f = max(top, key=lambda j: len(top[j][2]))
    col = dense_from_cache(cache)[:, :, f]
    assert sorted(top[f][2].tolist(), reverse=True) == pytest.approx(np.sort(col.ravel())[::-1][:5].tolist())


KILL_SCRIPT = """
import sys
import time
from pathlib import Path
from saexplain.cache.latents import CacheConfig, LatentCache
from saexplain.data.contexts import CorpusConfig, build_contexts
from saexplain.subject.oracle import Oracle, SubjectConfig
model, sae, corpus, out = sys.argv[1:5]
oracle = Oracle.from_config(SubjectConfig(model=model, sae=sae))
ctx = build_contexts(CorpusConfig(corpus=[corpus], context=%d), oracle.subject.tokenizer)
codes = oracle.codes  # 50 ms per batch: the tiny model could write all 15 shards between two polls of the test
oracle.codes = lambda *a, **k: (time.sleep(0.05), codes(*a, **k))[1]
LatentCache.build(oracle, ctx, CacheConfig(tokens=60 * %d, shard_contexts=4, batch_contexts=2), Path(out),
                  {"kill": 1}, progress=False)
""" % (CONTEXT, CONTEXT)


def test_cache_killed_with_sigkill_resumes_without_loss(oracle, corpus_file, tmp_path, tiny_model_dir, sae_folders):
    out = tmp_path / "killed"
    env = {**os.environ, "SAEXPLAIN_HOME": os.environ["SAEXPLAIN_HOME"]}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_model_dir), str(sae_folders["topk"]),
                             str(corpus_file), str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard_*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in out.glob("shard_*.npz"))
    assert 3 <= len(done_before) < 15, "the process must be killed mid-run"
    assert not json.loads((out / "meta.json").read_text())["complete"]
    ctx = build_contexts(CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), oracle.subject.tokenizer)
    cfg = CacheConfig(tokens=60 * CONTEXT, shard_contexts=4, batch_contexts=2)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npz")}
    resumed = LatentCache.build(oracle, ctx, cfg, out, {"kill": 1}, progress=False)
    for name in done_before:  # finished shards are kept, not recomputed
        assert (out / name).stat().st_mtime_ns == mtimes[name]
    assert not list(out.glob("*.tmp*"))
    fresh = LatentCache.build(oracle, ctx, cfg, tmp_path / "fresh", {"kill": 1}, progress=False)
    np.testing.assert_allclose(dense_from_cache(resumed), dense_from_cache(fresh), rtol=1e-5, atol=1e-6)
    assert resumed.meta["complete"]


def test_finished_cache_is_reused_when_config_matches(oracle, corpus_file, monkeypatch, tmp_path):
    store = Store(tmp_path / "s.db")
    subject = SubjectConfig(model=oracle.subject.name, sae="unused-not-loaded")
    corpus = CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT)
    cfg = CacheConfig(tokens=10 * CONTEXT, shard_contexts=5)
    first = build_cache(subject, corpus, cfg, store, oracle=oracle, progress=False)
    monkeypatch.setattr(oracle, "codes", lambda *a, **k: pytest.fail("a finished cache must not be recomputed"))
    again = build_cache(subject, corpus, cfg, store, oracle=oracle, progress=False)
    assert again.run_id == first.run_id and again.cache.path == first.cache.path
    assert len(store.feature_stats(first.run_id)) == oracle.d_sae


# ------------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def cached(oracle, corpus_file, tmp_path_factory):
    ctx = build_contexts(CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), oracle.subject.tokenizer)
    cache = LatentCache.build(oracle, ctx, CacheConfig(tokens=200 * CONTEXT, shard_contexts=50),
                              tmp_path_factory.mktemp("c") / "c", {}, progress=False)
    return cache, ctx


def test_corpus_search_reads_only_the_explain_pool_with_the_caches_values(cached):
    """An explainer's corpus search (sampling/search.py): every match of the feature's explain half and none of
    its score half (the same seeded split as the sampler), with the cache's own values on the matched token and
    the one after it; word, token and regex patterns agree on a plain word; it pickles without its arrays."""
    import pickle

    from saexplain.sampling.search import CorpusSearch

    cache, ctx = cached
    search = CorpusSearch(cache.path, ctx.path, seed=0, explain_share=0.5)
    strings = [ctx.window(c, 0, ctx.length)[0] for c in range(cache.n_contexts)]
    alive = [f for f, r in enumerate(cache.statistics()) if r["n_nonzero"] > 30][:4]
    for f in alive:
        explain = pool_of(f, np.arange(cache.n_contexts), 0, 0.5)
        where = [(c, t) for c in range(cache.n_contexts) for t, s in enumerate(strings[c]) if s.strip().lower() == "the"]
        assert any(not explain[c] for c, _ in where), "the score half holds matches too (or the test proves nothing)"
        expected = [(c, t) for c, t in where if explain[c]]
        results = [search.search(f, p, limit=10_000) for p in ("token:the", "the", r"re:(?<!\w)the(?!\w)")]
        assert results[0].matches == len(expected) == len(results[0].hits)
        assert [(h.context, h.token) for h in results[0].hits] == expected
        # a word is matched in the text (also where the tokenizer split it or glued punctuation to it)
        assert results[1].hits == results[2].hits and results[1].matches >= results[0].matches
        assert all(explain[h.context] for res in results for h in res.hits)
        values = cache.feature_values(f, [c for c, _ in expected])
        for h in results[0].hits:
            assert h.at == values[h.context][h.token]
            assert h.after == (values[h.context][h.token + 1] if h.token + 1 < ctx.length else 0.0)
            assert "[" in h.snippet and h.snippet.split("[")[1].split("]")[0].strip().lower() == "the"
        few = search.search(f, "token:the", limit=5)
        assert len(few.hits) == 5 and few.matches == len(expected)  # spread over all matches, counted in full
    bound = pickle.loads(pickle.dumps(search.bind(alive[0])))
    assert len(pickle.dumps(search.bind(alive[0]))) < 2000
    assert bound("token:the", 10_000).hits == search.search(alive[0], "token:the", 10_000).hits
    assert search.search(alive[0], "re:(").matches == 0  # a broken regex finds nothing, it does not raise


def test_no_leak_between_explain_and_score_pools(cached):
    cache, ctx = cached
    sampler = Sampler(ctx.tokens, SamplingConfig(window=16, explain_top=10, score_top=10, score_per_decile=2,
                                                 random_negatives=10, hard_negatives=10))
    alive = [f for f, r in enumerate(cache.statistics()) if r["n_nonzero"] > 30][:12]
    assert len(alive) >= 5
    for f, (c, p, v) in cache.collect(alive).items():
        exs = sampler.sample(f, c, p, v)
        explain = {e.context for e in exs if e.pool == "explain"}
        score = {e.context for e in exs if e.pool == "score"}
        assert explain and score and not explain & score, f"feature {f}: a context is in both pools"
        kinds = {e.kind for e in exs}
        assert {"top", "random"} <= kinds
        for e in exs:
            assert e.end - e.start == 16 and 1 <= e.start and e.end <= CONTEXT
            truth = np.zeros(16, np.float32)
            m = (c == e.context) & (p >= e.start) & (p < e.end)
            truth[p[m] - e.start] = v[m]
            np.testing.assert_array_equal(e.acts, truth)
            if e.kind in ("random", "hard_negative"):
                assert e.max_act == 0 and not (c == e.context).any()
        tops = [e.max_act for e in exs if e.pool == "explain" and e.kind == "top"]
        assert tops == sorted(tops, reverse=True)
        # the explain pool's top examples are the strongest contexts of its half of the corpus
        explain_ctx_max = {int(cc): float(v[c == cc].max()) for cc in np.unique(c) if
                           pool_of(f, np.array([cc]), 0, 0.5)[0]}
        assert tops[0] == pytest.approx(max(explain_ctx_max.values()))


def test_sampling_is_deterministic_under_a_seed(cached):
    cache, ctx = cached
    f = max(range(cache.d_sae), key=lambda j: cache.statistics()[j]["n_nonzero"])
    (c, p, v), = cache.collect([f]).values()
    rows = lambda seed: [e.row() for e in Sampler(ctx.tokens, SamplingConfig(window=16, seed=seed)).sample(f, c, p, v)]
    assert rows(1) == rows(1)
    assert rows(1) != rows(2)


# ------------------------------------------------------------------------------------------------- store
def test_store_is_wal_versioned_and_readable_while_writing(tmp_path):
    path = tmp_path / "s.db"
    writer = Store(path)
    assert writer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert writer.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    run = writer.get_or_create_run("cache", "h1", "{}")
    assert writer.get_or_create_run("cache", "h1", "{}") == run
    row = {"feature": 0, "max_act": 1.0, "frequency": 0.1, "mean_nonzero": 0.5, "n_nonzero": 3,
           "histogram": {"edges": [0, 1], "counts": [3]}, "dead": False}
    writer.put_feature_stats(run, [row])
    reader = Store(path, readonly=True)
    with writer.transaction() as c:  # a write in progress does not block readers
        c.execute("UPDATE features SET max_act=2 WHERE run_id=?", (run,))
        assert reader.feature_stats(run)[0]["max_act"] == 1.0
    assert reader.feature_stats(run)[0]["max_act"] == 2.0
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM runs")
    writer.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SaexplainError, match="newer than this saexplain"):
        Store(path)
    with pytest.raises(SaexplainError, match="store not found"):
        Store(tmp_path / "missing.db", readonly=True)


def test_cli_cache_features_sample(tiny_model_dir, sae_folders, corpus_file, tmp_path):
    from saexplain.cli import app

    runner = CliRunner()
    db = tmp_path / "cli.db"
    base = ["--model", str(tiny_model_dir), "--sae", str(sae_folders["topk"])]
    res = runner.invoke(app, ["cache", *base, "--corpus", str(corpus_file), "--context", str(CONTEXT),
                              "--tokens", "5k", "--store", str(db)])
    assert res.exit_code == 0, res.output
    assert "bytes each" in res.output
    res = runner.invoke(app, ["features", "--top", "5", "--by", "max", "--store", str(db)])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("│")]
    assert len(rows) == 5
    maxes = [float(r.split("│")[2]) for r in rows]
    assert maxes == sorted(maxes, reverse=True)
    best = int(rows[0].split("│")[1])
    res = runner.invoke(app, ["sample", "--feature", str(best), "--window", "16", "--store", str(db)])
    assert res.exit_code == 0, res.output
    assert "explain:" in res.output and "score:" in res.output
    with Store(db, readonly=True) as s:
        run = s.runs("sample")[-1]["id"]
        pools = {r["pool"] for r in s.examples(run, best)}
    assert pools == {"explain", "score"}
    res = runner.invoke(app, ["sample", "--feature", "99999", "--store", str(db)])
    assert res.exit_code == 2 and "unknown feature id 99999" in res.output
    res = runner.invoke(app, ["features", "--by", "size", "--store", str(db)])
    assert res.exit_code == 2 and "cannot order features by 'size'" in res.output


def test_a_retrained_sae_in_the_same_folder_gets_a_new_cache(oracle, corpus_file, tmp_path, sae_folders):
    import shutil

    from saexplain.cache.pipeline import cache_config_json

    folder = tmp_path / "sae"
    shutil.copytree(sae_folders["topk"], folder)
    subject = SubjectConfig(model=oracle.subject.name, sae=str(folder))
    corpus, cfg = CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), CacheConfig(tokens=1000)
    before = cache_config_json(subject, corpus, cfg)
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    weights.write_bytes(data)  # rewritten, same bytes: same SAE, same cache
    assert cache_config_json(subject, corpus, cfg) == before
    data[-1] ^= 1  # one weight changed (a retrained SAE saved over the old one)
    weights.write_bytes(data)
    assert cache_config_json(subject, corpus, cfg) != before
    assert cache_config_json(subject, corpus, CacheConfig(tokens=1000, batch_contexts=3)) == \
        cache_config_json(subject, corpus, cfg), "batch size changes speed, not the cache"


def test_feature_values_read_the_cache_exactly_and_check_the_shards_they_touch(oracle, corpus_file, tmp_path):
    """What a feature page reads (a few contexts of one feature, memory-mapped) equals the cache's own stream,
    and a damaged shard is one error naming it, as every other cache read."""
    ctx = build_contexts(CorpusConfig(corpus=[str(corpus_file)], context=CONTEXT), oracle.subject.tokenizer)
    cfg = CacheConfig(tokens=30 * CONTEXT, shard_contexts=4, batch_contexts=2)
    cache = LatentCache.build(oracle, ctx, cfg, tmp_path / "c", {"fv": 1}, progress=False)
    feature = int(np.argmax([s["n_nonzero"] for s in cache.statistics()]))
    c, pos, val = cache.collect([feature])[feature]
    wanted = sorted({int(x) for x in c[:5]}) + [0]  # contexts where it fires, and one in the first shard
    got = LatentCache(tmp_path / "c").feature_values(feature, wanted)
    expected = {k: np.zeros(CONTEXT, np.float32) for k in wanted}
    for cc, pp, vv in zip(c, pos, val):
        if int(cc) in expected:
            expected[int(cc)][int(pp)] = vv
    assert sorted(got) == sorted(expected)
    for k, row in expected.items():
        np.testing.assert_array_equal(got[k], row)
    victim = sorted((tmp_path / "c").glob("shard_*.npz"))[int(max(wanted)) // 4]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(SaexplainError, match=f"{victim.name}: shard is damaged"):
        LatentCache(tmp_path / "c").feature_values(feature, [max(wanted)])
