"""Read documents from local corpus files. One reader per file type, in a registry.

- `.txt`: documents are blocks separated by blank lines (paragraphs), kept as written: line breaks, indentation
  and runs of spaces are tokens the model sees (only CRLF becomes LF, a leading byte-order mark is dropped, and
  blank lines around a block are trimmed). Gutenberg headers are kept as text.
- `.csv`: one document per row; the text columns are joined (AG News: title + description). Without
  `--text-column`, label/id columns and columns holding only numbers are left out; a file with no text column
  is refused, naming its columns.
- `.jsonl`: one document per line, field `text` (or `--text-column`).
- `.parquet`: column `text` (or `--text-column`).
Bytes that are not UTF-8 are replaced by U+FFFD and counted: a file with a few gets a warning with the count;
one where more than MAX_BAD_SHARE of the bytes are not UTF-8 (another encoding such as Latin-1, or binary data)
is refused with one line, since caching it would fill the cache with replacement characters.

READER_VERSION is part of a corpus's fingerprint: a change to what a reader makes of a file rebuilds the
tokenised corpora and caches made from it."""

from __future__ import annotations

import csv
import functools
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from saexplain.errors import SaexplainError
from saexplain.registry import Registry

DEFAULT_CORPUS_FILES = ("grimm_tales.txt", "tinyshakespeare.txt")  # package data: data/default_corpus/
READER_VERSION = 2  # 2: .txt keeps line breaks and indentation; CSV leaves number-only columns out
MAX_BAD_SHARE = 0.01  # refuse a file when more than this share of its bytes is not UTF-8

log = logging.getLogger(__name__)


@dataclass
class Document:
    doc_id: str
    text: str


@dataclass
class ReadStats:
    documents: int = 0
    replaced_bytes: int = 0
    per_file: dict[str, int] = field(default_factory=dict)


Reader = Callable[[Path, "str | None", ReadStats], Iterator[Document]]
READERS: Registry[Reader] = Registry("corpus file type")


def _read_text(path: Path, stats: ReadStats) -> str:
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    if bad:
        share = bad / max(len(raw), 1)
        if share > MAX_BAD_SHARE:
            raise SaexplainError(f"{path}: {bad:,} of {len(raw):,} bytes ({share:.1%}) are not UTF-8 — another "
                                 f"encoding (e.g. Latin-1: `iconv -f latin1 -t utf-8`) or not text; refused "
                                 f"(more than {MAX_BAD_SHARE:.0%})")
        log.warning("%s: %d bytes are not UTF-8 and were replaced by U+FFFD", path, bad)
    stats.replaced_bytes += bad
    return text


@READERS.register(".txt")
def read_txt(path: Path, column: str | None, stats: ReadStats) -> Iterator[Document]:
    text = _read_text(path, stats).removeprefix("\ufeff").replace("\r\n", "\n")
    for i, block in enumerate(re.split(r"\n[ \t]*\n", text)):
        block = block.strip("\n").rstrip()
        if block.strip():
            yield Document(f"{path.name}:{i}", block)


@READERS.register(".csv")
def read_csv(path: Path, column: str | None, stats: ReadStats) -> Iterator[Document]:
    rows = csv.reader(_read_text(path, stats).splitlines())
    header = next(rows, None)
    if header is None:
        return
    has_header = not any(c.strip().isdigit() for c in header[:1])
    names = header if has_header else [f"col{i}" for i in range(len(header))]
    if column is not None:
        if column not in names:
            raise SaexplainError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
        cols = [names.index(column)]
    else:  # every column that holds text: not labels or ids, not numbers only (judged on the first rows)
        rows = list(rows) if has_header else [header, *rows]
        head = rows[:200]
        cols = [i for i, n in enumerate(names) if n.lower() not in {"label", "labels", "id", "class"}
                and any(i < len(r) and r[i].strip() and not _number(r[i]) for r in head)]
        if not cols:
            raise SaexplainError(f"{path}: no text column (columns: {', '.join(names)}); name one with "
                                 f"--text-column")
        rows = iter(rows)
    if not has_header and column is not None:
        rows = iter([header, *rows])
    for i, row in enumerate(rows):
        text = " ".join(row[c].replace("\\", " ").strip() for c in cols if c < len(row))
        text = " ".join(text.split())
        if text:
            yield Document(f"{path.name}:{i}", text)


def _number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
    except ValueError:
        return False
    return True


@READERS.register(".jsonl")
def read_jsonl(path: Path, column: str | None, stats: ReadStats) -> Iterator[Document]:
    key = column or "text"
    for i, line in enumerate(_read_text(path, stats).splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaexplainError(f"{path}:{i + 1}: not JSON ({e.msg})") from None
        if key not in obj:
            raise SaexplainError(f"{path}:{i + 1}: no field {key!r}")
        if str(obj[key]).strip():
            yield Document(f"{path.name}:{i}", str(obj[key]))


@READERS.register(".parquet")
def read_parquet(path: Path, column: str | None, stats: ReadStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    key = column or "text"
    if key not in table.column_names:
        raise SaexplainError(f"{path}: no column {key!r} (columns: {', '.join(table.column_names)})")
    for i, value in enumerate(table.column(key).to_pylist()):
        if value is not None and str(value).strip():
            yield Document(f"{path.name}:{i}", str(value))


def iter_hf_dataset(spec: str, column: str | None, stats: ReadStats) -> Iterator[Document]:
    """`hf:<dataset id>[:<split>]` through `datasets.load_dataset` (needs the hub, or its local cache)."""
    from datasets import load_dataset

    _, _, rest = spec.partition("hf:")
    name, _, split = rest.partition(":")
    try:
        ds = load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # network, unknown dataset: one line
        raise SaexplainError(f"cannot load dataset {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    key = column or "text"
    for i, row in enumerate(ds):
        if key not in row:
            raise SaexplainError(f"dataset {name}: no column {key!r} (columns: {', '.join(row)})")
        if str(row[key]).strip():
            yield Document(f"{name}:{i}", str(row[key]))


def iter_documents(paths: list[str | Path], column: str | None = None,
                   stats: ReadStats | None = None) -> Iterator[Document]:
    stats = stats if stats is not None else ReadStats()
    files: list[Path] = []
    for spec in paths:
        if str(spec).startswith("hf:"):
            n = 0
            for doc in iter_hf_dataset(str(spec), column, stats):
                n += 1
                yield doc
            stats.per_file[str(spec)] = n
            stats.documents += n
    for p in (Path(s).expanduser() for s in paths if not str(s).startswith("hf:")):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in READERS)
        elif p.is_file():
            files.append(p)
        else:
            raise SaexplainError(f"corpus file not found: {p}")
    for f in files:
        reader = READERS.get(f.suffix.lower())
        n = 0
        for doc in reader(f, column, stats):
            n += 1
            yield doc
        stats.per_file[str(f)] = n
        stats.documents += n
    if stats.documents == 0:
        raise SaexplainError(f"empty corpus: no text in {', '.join(map(str, paths))}")


_RESOURCES = ExitStack()  # keeps the default corpus's files on disk for the process if the package is zipped


def default_corpus() -> list[str]:
    """The public-domain texts shipped with the package (data/default_corpus/, its README names the sources and
    licences), as file paths: read through importlib.resources, so a wheel install finds them too."""
    return list(_default_corpus_paths())


@functools.cache
def _default_corpus_paths() -> tuple[str, ...]:
    folder = resources.files("saexplain.data") / "default_corpus"
    paths = []
    for name in DEFAULT_CORPUS_FILES:
        res = folder / name
        if not res.is_file():
            raise SaexplainError(f"default corpus file {name} missing from the saexplain package "
                                 f"({folder}): reinstall saexplain or pass --corpus")
        paths.append(str(_RESOURCES.enter_context(resources.as_file(res))))
    return tuple(paths)
