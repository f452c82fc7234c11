"""The latent cache: stream contexts through the truncated forward + SAE and keep the non-zero activations on
disk in shards, flushed as the run goes (RAM bounded by one shard whatever the corpus size).

Shard format (`shard_<first ctx>_<end ctx>.npz`, written to a temporary name and renamed, so a shard file
is complete or absent): CSR over the shard's tokens —
  counts  uint16 [n_ctx × L]   non-zeros per token (0 for BOS)
  indices uint16 [nnz]         feature ids (uint32 when d_sae > 65,535)
  values  float32 [nnz]        activations, exactly as the oracle computed them
= 6 bytes per stored non-zero (8 with uint32 ids) plus 2 bytes per token for the counts.

A run killed at any point resumes after its last complete shard; a finished cache (meta.json says
`complete`) is reused when its config hash matches."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from saexplain.cache.config import CacheConfig  # its home is a light module
from saexplain.data.contexts import Contexts
from saexplain.errors import SaexplainError
from saexplain.locks import exclusive

HIST_BINS = 30
HIST_DECADES = 3  # histogram edges: max × 10^linspace(-3, 0, 31), per feature


@dataclass
class Shard:
    start: int  # first context
    end: int  # one past the last context
    counts: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def token_index(self) -> np.ndarray:
        """Flat token index (within the shard) of each stored non-zero."""
        return np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts.astype(np.int64))


class LatentCache:
    """A latent cache folder. A finished one carries a manifest (every shard's context range, size and sha256)
    in meta.json: opening checks that every shard is there with its size, reading checks each shard's sha256,
    and a missing or damaged shard is one error naming the file and how to rebuild."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._verified: set[str] = set()
        self._maps: dict[str, tuple] = {}  # memory-mapped shards read by feature_values
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise SaexplainError(f"no latent cache in {self.path}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise SaexplainError(f"{meta_path}: unreadable cache metadata ({e}); {self._rebuild}") from None
        if self.meta.get("complete"):
            if "shards" not in self.meta:  # finished before caches had manifests: check coverage, then pin them
                self._check_coverage()
                self.meta["shards"] = [_manifest_entry(p) for p in self.shard_paths()]
                _atomic_write(meta_path, json.dumps(self.meta, indent=1))
            self._check_manifest()

    @property
    def _rebuild(self) -> str:
        return f"remove {self.path} and run `saexplain cache` (or the same `run`) again to rebuild it"

    def _check_coverage(self) -> None:
        end = _contiguous_end(self.path)
        if end != self.n_contexts:
            raise SaexplainError(f"{self.path}: shards cover {end} of {self.n_contexts} contexts; {self._rebuild}")

    def _check_manifest(self) -> None:
        listed = {e["name"]: e for e in self.meta["shards"]}
        for name, e in listed.items():
            p = self.path / name
            if not p.is_file():
                raise SaexplainError(f"{p}: shard missing from the cache (contexts {e['start']}–{e['end']}); "
                                     f"{self._rebuild}")
            size = p.stat().st_size
            if size != e["bytes"]:
                raise SaexplainError(f"{p}: shard is {size} bytes, its manifest says {e['bytes']} (truncated or "
                                     f"replaced); {self._rebuild}")
        extra = sorted(p.name for p in self.shard_paths() if p.name not in listed)
        if extra:
            raise SaexplainError(f"{self.path / extra[0]}: a shard the cache's manifest does not list; {self._rebuild}")

    # ---------------------------------------------------------------------------------------- building
    # plan (which shard ranges are due) → write shards (an oracle, the contexts and a range in, a file out: any
    # process can write any range, in any order) → finish (the manifest). `build` does all three here; the Ray
    # executor (distributed/cache.py) plans and finishes in the driver and writes the shards on its workers.
    @classmethod
    def build(cls, oracle, contexts: Contexts, cfg: CacheConfig, path: Path, config_json: dict,
              progress: bool = True) -> LatentCache:
        """Build (or resume) the cache in `path`; one process at a time (a second one waits, then reuses it)."""
        path.mkdir(parents=True, exist_ok=True)
        with exclusive(path / ".lock", "this latent cache"):
            write_shards(oracle, contexts, cfg, path, cls.plan(oracle.d_sae, contexts, cfg, path, config_json),
                         progress)
            return cls.finish(path)

    @staticmethod
    def planned_contexts(contexts: Contexts, cfg: CacheConfig) -> int:
        return min(contexts.n_contexts, max(1, cfg.tokens // contexts.length))

    @classmethod
    def plan(cls, d_sae: int, contexts: Contexts, cfg: CacheConfig, path: Path, config_json: dict
             ) -> list[tuple[int, int]]:
        """The shard ranges still to write (none for a finished cache). Writes meta.json for a new cache, refuses a
        folder holding another cache, and removes temporaries left by killed writers (the caller holds the
        cache's lock, so none belongs to a live one). A shard on disk is complete (written to a temporary name
        and renamed), so a killed build — local or distributed, whatever order its shards were written in —
        resumes with the ranges that have no file."""
        n_ctx = cls.planned_contexts(contexts, cfg)
        meta = {"config": config_json, "d_sae": d_sae, "n_contexts": n_ctx, "context": contexts.length,
                "contexts_path": str(contexts.path), "index_dtype": "uint16" if d_sae <= 65535 else "uint32",
                "bos": contexts.bos, "shard_contexts": cfg.shard_contexts, "complete": False}
        meta_path = path / "meta.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if old.get("complete"):
                return []
            if {k: old.get(k) for k in ("config", "n_contexts", "d_sae")} != \
                    {k: meta[k] for k in ("config", "n_contexts", "d_sae")}:
                raise SaexplainError(f"{path} holds a different cache; remove it or change $SAEXPLAIN_HOME")
        else:
            _atomic_write(meta_path, json.dumps(meta, indent=1))
        for tmp in path.glob("*.tmp*"):
            tmp.unlink()
        ranges = shard_ranges(n_ctx, cfg.shard_contexts)
        names = {_shard_name(a, b) for a, b in ranges}
        for p in sorted(path.glob("shard_*.npz")):
            if p.name not in names:
                raise SaexplainError(f"{p}: a shard this cache's plan does not have (another --shard-contexts?); "
                                     f"remove {path} and run `saexplain cache` again")
        return [(a, b) for a, b in ranges if not (path / _shard_name(a, b)).is_file()]

    @classmethod
    def finish(cls, path: Path) -> LatentCache:
        """Every planned shard written: pin the manifest (shard ranges, sizes, sha256) and mark the cache done."""
        meta_path = path / "meta.json"
        meta = json.loads(meta_path.read_text())
        if not meta.get("complete"):
            end = _contiguous_end(path)
            if end != meta["n_contexts"]:
                raise SaexplainError(f"{path}: shards cover {end} of {meta['n_contexts']} contexts; run the same "
                                     f"command again to write the rest")
            meta["shards"] = [_manifest_entry(p) for p in sorted(path.glob("shard_*.npz"))]
            meta["complete"] = True
            meta["finished"] = time.time()
            _atomic_write(meta_path, json.dumps(meta, indent=1))
        return cls(path)

    # ----------------------------------------------------------------------------------------- reading
    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def context(self) -> int:
        return int(self.meta["context"])

    @property
    def n_contexts(self) -> int:
        return int(self.meta["n_contexts"])

    def shard_paths(self) -> list[Path]:
        return sorted(self.path.glob("shard_*.npz"))

    def shards(self) -> Iterator[Shard]:
        """Every shard in order, each checked against the manifest's sha256 as it is read."""
        for p in self.shard_paths():
            a, b = _shard_range(p)
            data = p.read_bytes()
            self._check_sum(p, data)
            try:
                with np.load(io.BytesIO(data)) as z:
                    shard = Shard(a, b, z["counts"], z["indices"], z["values"])
            except Exception as e:  # noqa: BLE001  any decoding fault of a file is that file's damage
                raise SaexplainError(f"{p}: shard does not load ({type(e).__name__}: {e}); {self._rebuild}") from None
            self._check_fit(p, a, b, shard.counts, shard.indices, shard.values)
            yield shard

    def feature_values(self, feature: int, contexts: list[int]) -> dict[int, np.ndarray]:
        """One feature's value at every position of the given contexts ({context: [context_len]}), reading only
        the shards that hold them, and from each only the bytes of those contexts (the members of a shard file
        are stored uncompressed, so they are memory-mapped). Each shard touched is checked against the
        manifest's sha256 once per opening, as `shards()` does. This is what a feature page reads."""
        if not self.meta.get("complete"):
            raise SaexplainError(f"{self.path}: the cache is not finished; {self._rebuild}")
        L = self.context
        ranges = [(e["start"], e["end"], e["name"]) for e in self.meta["shards"]]
        starts = np.asarray([a for a, _, _ in ranges])
        out: dict[int, np.ndarray] = {}
        for c in sorted({int(c) for c in contexts}):
            if not 0 <= c < self.n_contexts:
                raise SaexplainError(f"context {c} is not in the cache ({self.n_contexts} contexts)")
            a, _, name = ranges[int(np.searchsorted(starts, c, side="right")) - 1]
            counts, offsets, indices, values = self._mapped(name)
            lo, hi = (c - a) * L, (c - a + 1) * L
            row = np.zeros(L, np.float32)
            nz_lo, nz_hi = int(offsets[lo]), int(offsets[hi])
            idx = np.asarray(indices[nz_lo:nz_hi])
            hit = np.flatnonzero(idx == feature)
            if hit.size:
                tok = np.repeat(np.arange(L), np.asarray(counts[lo:hi], np.int64))[hit]
                row[tok] = np.asarray(values[nz_lo:nz_hi])[hit]
            out[c] = row
        return out

    def _mapped(self, name: str):
        """(counts, offsets, indices, values) of one shard, memory-mapped and checked once."""
        if name not in self._maps:
            p = self.path / name
            if name not in self._verified:
                self._check_sum(p, p.read_bytes())
            a, b = _shard_range(p)
            try:
                arrays = _npz_members(p)
                counts, indices, values = arrays["counts"], arrays["indices"], arrays["values"]
            except Exception as e:  # noqa: BLE001  any decoding fault of a file is that file's damage
                raise SaexplainError(f"{p}: shard does not load ({type(e).__name__}: {e}); {self._rebuild}") from None
            self._check_fit(p, a, b, counts, indices, values)
            self._maps[name] = (counts, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]), indices, values)
        return self._maps[name]

    def _check_sum(self, p: Path, data: bytes) -> None:
        """A shard's bytes against the manifest's sha256, once per opening (caches finished before manifests
        had sums are checked by coverage only)."""
        if p.name in self._verified:
            return
        want = next((e["sha256"] for e in self.meta.get("shards", []) if e["name"] == p.name), None)
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise SaexplainError(f"{p}: shard is damaged (its sha256 differs from the cache's manifest); "
                                 f"{self._rebuild}")

    def _check_fit(self, p: Path, a: int, b: int, counts, indices, values) -> None:
        if len(counts) != (b - a) * self.context or int(np.asarray(counts).sum(dtype=np.int64)) != len(values) \
                or len(indices) != len(values):
            raise SaexplainError(f"{p}: shard arrays do not fit contexts {a}–{b}; {self._rebuild}")
        self._verified.add(p.name)  # checked once per opening: statistics read every shard twice

    def storage(self) -> dict:
        nnz = sum(int(np.load(p, mmap_mode="r")["values"].shape[0]) for p in self.shard_paths())
        size = sum(p.stat().st_size for p in self.shard_paths())
        return {"nonzeros": nnz, "bytes": size, "bytes_per_nonzero": size / max(nnz, 1)}

    def statistics(self, progress: bool = False) -> list[dict]:
        """Per feature: max, frequency, mean non-zero, log-spaced histogram, dead — two streaming passes."""
        with tqdm(total=2 * len(self.meta.get("shards", [])) or None, unit="shard", desc="feature statistics",
                  disable=not progress) as bar:
            d = self.d_sae
            mx = np.zeros(d, np.float32)
            n = np.zeros(d, np.int64)
            total = np.zeros(d, np.float64)
            tokens = 0
            bos = int(self.meta.get("bos", True))
            for s in self.shards():
                tokens += len(s.counts) - (s.end - s.start) * bos  # text tokens: one BOS per context, if any
                np.maximum.at(mx, s.indices, s.values)
                n += np.bincount(s.indices, minlength=d)
                total += np.bincount(s.indices, weights=s.values, minlength=d)
                bar.update()
            hist = np.zeros((d, HIST_BINS), np.int64)
            safe = np.where(mx > 0, mx, 1.0)
            for s in self.shards():
                pos = s.values > 0
                f, v = s.indices[pos].astype(np.int64), s.values[pos]
                b = np.floor((np.log10(v / safe[f]) + HIST_DECADES) * HIST_BINS / HIST_DECADES).astype(np.int64)
                b = np.clip(b, 0, HIST_BINS - 1)
                hist += np.bincount(f * HIST_BINS + b, minlength=d * HIST_BINS).reshape(d, HIST_BINS)
                bar.update()
        edges_rel = (10.0 ** np.linspace(-HIST_DECADES, 0, HIST_BINS + 1)).tolist()
        out = []
        for j in range(d):
            out.append({"feature": j, "max_act": float(mx[j]), "frequency": n[j] / max(tokens, 1),
                        "mean_nonzero": float(total[j] / n[j]) if n[j] else 0.0, "n_nonzero": int(n[j]),
                        "histogram": {"edges": [e * float(mx[j]) for e in edges_rel], "counts": hist[j].tolist()},
                        "dead": bool(n[j] == 0)})
        return out

    def top_activations(self, n: int = 50, progress: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per feature, its `n` strongest activations (context, position, value), streamed over the shards."""
        with tqdm(total=len(self.meta.get("shards", [])) or None, unit="shard", desc="top activations",
                  disable=not progress) as bar:
            L = self.context
            keep_f = np.zeros(0, np.int64)
            keep_t = np.zeros(0, np.int64)  # global token index
            keep_v = np.zeros(0, np.float32)
            for s in self.shards():
                f = np.concatenate([keep_f, s.indices.astype(np.int64)])
                t = np.concatenate([keep_t, s.start * L + s.token_index])
                v = np.concatenate([keep_v, s.values])
                order = np.lexsort((-v, f))
                f, t, v = f[order], t[order], v[order]
                group_start = np.r_[0, np.flatnonzero(f[1:] != f[:-1]) + 1]
                rank = np.arange(len(f)) - np.repeat(group_start, np.diff(np.r_[group_start, len(f)]))
                m = rank < n
                keep_f, keep_t, keep_v = f[m], t[m], v[m]
                bar.update()
        out = {}
        bounds = np.r_[0, np.flatnonzero(keep_f[1:] != keep_f[:-1]) + 1, len(keep_f)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                out[int(keep_f[a])] = (keep_t[a:b] // L, keep_t[a:b] % L, keep_v[a:b])
        return out

    def collect(self, features: list[int], progress: bool = False
                ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """All non-zeros of the given features: {feature: (context, position, value)} in one pass."""
        with tqdm(total=len(self.meta.get("shards", [])) or None, unit="shard",
                  desc=f"reading {len(set(features))} features", disable=not progress) as bar:
            feats = np.asarray(sorted(set(features)), dtype=np.int64)
            parts: dict[int, list] = {int(f): [] for f in feats}
            L = self.context
            for s in self.shards():
                bar.update()
                sel = np.isin(s.indices, feats)
                if not sel.any():
                    continue
                tok = s.token_index[sel]
                f, v = s.indices[sel].astype(np.int64), s.values[sel]
                for j in np.unique(f):
                    m = f == j
                    parts[int(j)].append((s.start + tok[m] // L, tok[m] % L, v[m]))
        out = {}
        for j, chunks in parts.items():
            if chunks:
                out[j] = tuple(np.concatenate([c[i] for c in chunks]) for i in range(3))
            else:
                out[j] = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        return out


def shard_ranges(n_contexts: int, shard_contexts: int) -> list[tuple[int, int]]:
    """The cache's shard boundaries: every `shard_contexts` contexts from 0 (the last one shorter)."""
    return [(a, min(n_contexts, a + shard_contexts)) for a in range(0, n_contexts, shard_contexts)]


def write_shards(oracle, contexts: Contexts, cfg: CacheConfig, path: Path, due: list[tuple[int, int]],
                 progress: bool = True) -> None:
    """The due shard ranges, one after the other, in this process (with a progress bar over the whole cache)."""
    if not due:
        return
    with shard_progress(contexts, cfg, due, "caching", progress) as bar:
        for a, b in due:
            write_shard(oracle, contexts, cfg, path, a, b, on_batch=bar.update)


def shard_progress(contexts: Contexts, cfg: CacheConfig, due: list[tuple[int, int]], desc: str, progress: bool):
    """A progress bar in tokens over the whole cache, starting at what the shards already on disk hold."""
    total = LatentCache.planned_contexts(contexts, cfg)
    done = total - sum(b - a for a, b in due)
    return tqdm(total=total * contexts.length, initial=done * contexts.length, unit="tok", unit_scale=True,
                desc=desc, disable=not progress)


def write_shard(oracle, contexts: Contexts, cfg: CacheConfig, path: Path, start: int, end: int,
                on_batch=None) -> dict:
    """Encode contexts [start, end) in batches of `cfg.batch_contexts` from `start` and write their shard (a
    temporary file, fsynced, renamed). The same range gives the same bytes whichever process writes it: the
    batches are the same, and the file carries no time stamp. Returns the shard's manifest entry."""
    import torch

    idx_dtype = np.dtype("uint16" if oracle.d_sae <= 65535 else "uint32")
    counts, indices, values = [], [], []
    for b in range(start, end, cfg.batch_contexts):
        ids = torch.from_numpy(np.asarray(contexts.tokens[b:min(end, b + cfg.batch_contexts)], np.int64))
        c, i, v = oracle.codes(ids)
        counts.append(c.numpy())
        indices.append(i.numpy())
        values.append(v.numpy())
        if on_batch is not None:
            on_batch(ids.numel())
    c = np.concatenate(counts)
    if c.max(initial=0) > np.iinfo(np.uint16).max:
        raise SaexplainError("more than 65,535 active features on one token")
    target = path / _shard_name(start, end)
    _save_shard(target, counts=c.astype(np.uint16), indices=np.concatenate(indices).astype(idx_dtype),
                values=np.concatenate(values).astype(np.float32))
    return _manifest_entry(target)


def top_token_ids(tokens: np.ndarray, ctx: np.ndarray, pos: np.ndarray, val: np.ndarray, n: int) -> np.ndarray:
    """The token ids at which a feature fires hardest: the strongest activations' tokens, weighted by value."""
    if len(ctx) == 0:
        return np.zeros(0, np.int64)
    best = np.argsort(-val)[:100]
    ids = np.asarray(tokens[ctx[best], pos[best]])
    uniq, inv = np.unique(ids, return_inverse=True)
    weight = np.bincount(inv, weights=val[best])
    return uniq[np.argsort(-weight, kind="stable")][:n]


def _shard_name(start: int, end: int) -> str:
    return f"shard_{start:09d}_{end:09d}.npz"


def _shard_range(p: Path) -> tuple[int, int]:
    _, a, b = p.stem.split("_")
    return int(a), int(b)


def _manifest_entry(p: Path) -> dict:
    a, b = _shard_range(p)
    return {"name": p.name, "start": a, "end": b, "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def _contiguous_end(path: Path) -> int:
    """Where the shards of `path` end; an error when one is missing before that."""
    end = 0
    for p in sorted(path.glob("shard_*.npz")):
        a, b = _shard_range(p)
        if a != end:
            raise SaexplainError(f"{path}: the shard for contexts {end}–{a} is missing; remove {path} and run "
                                 f"`saexplain cache` (or the same `run`) again to rebuild it")
        end = b
    return end


def _save_shard(path: Path, **arrays) -> None:
    """An uncompressed .npz as `np.savez` writes it, but with a fixed time stamp on every member, so equal arrays
    give equal bytes (and equal sha256) whoever writes them and when. The temporary name is unique per writer
    (host and process), so writers on several machines sharing the folder never collide."""
    import socket
    import zipfile

    tmp = path.with_name(path.name + f".tmp{socket.gethostname()}-{os.getpid()}")
    with open(tmp, "wb") as f:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for key, val in arrays.items():
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                with z.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(val), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz (what `np.savez` writes), memory-mapped in place."""
    import zipfile

    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {info.filename} is compressed")
            f.seek(info.header_offset)
            local = f.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            out[info.filename.removesuffix(".npy")] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(),
                                                                shape=shape, order="F" if fortran else "C")
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
