"""The repository itself: it runs from a lone clone (nothing read from a folder beside it) and stays light
(no file over 2 MB but the allow-listed default SAE)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 2 * 1024 * 1024
LARGE_ALLOWED = {"src/saexplain/subject/default_sae/sae_weights.safetensors"}  # the shipped default SAE
CHECKED = ("src/", "tests/", "bench/", "docs/", ".ci/", "Makefile", "README.md", "pyproject.toml", "constraints.txt",
           "requirements")
CODE = (".py", ".md", ".toml", ".txt", ".cfg", ".sh", ".yml", ".yaml", "")  # code, commands and docs, not corpora
# a relative path that climbs (not a URL's `/static/` + up), and a path part that is `..` itself
UP = re.compile(r"(?<![\w/.])((?:\.\./)+)")
UP_PART = re.compile(r"""/\s*(["'])\.\.\1""")
PARENTS = re.compile(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]((?:\.parent)*)")


def repository_files() -> list[str]:
    """What a commit of this working tree would hold: tracked files plus untracked ones git does not ignore
    (.ci/run copies exactly these into a fresh folder and runs the suite there)."""
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git work tree: the repository checks need one (.ci/run makes its copy one)")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def escapes_repository(rel: str, text: str) -> list[str]:
    """The lines of a file that name a path outside the repository: a relative path that climbs above the root
    (counted from the root, where commands and code run; for a markdown link, from the file's own folder), a `..`
    path part, or `Path(__file__).resolve().parents[N]` above the root."""
    depth = len(Path(rel).parts)  # parents[depth - 1] of a file at this depth is the repository root
    climb = depth - 1 if rel.endswith(".md") else 0
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        ups = [m.group(1).count("/") for m in UP.finditer(line)]
        parents = [int(m.group(1)) + m.group(2).count(".parent") for m in PARENTS.finditer(line)]
        if any(u > climb for u in ups) or UP_PART.search(line) or any(x > depth - 1 for x in parents):
            bad.append(f"{rel}:{n}: {line.strip()}")
    return bad


def test_the_checks_catch_what_they_are_for(tmp_path):
    up, here = "." * 2 + "/", "Path(__file__).resolve()"  # built, so that this file names no outside path itself
    assert escapes_repository("tests/tiny.py", f'X = {here}.parents[2] / "corpora"')
    assert escapes_repository("src/saexplain/data/corpus.py", f"X = {here}.parents[3].parent")
    assert escapes_repository("README.md", f"saexplain cache --corpus {up}corpora/news.csv")
    assert escapes_repository("bench/x.py", f'corpus = "{up}corpora/news.csv"')
    assert escapes_repository("docs/x.md", f"see [the data]({up}{up}corpora/README.md)")
    assert escapes_repository("bench/x.py", f'ROOT / "{up[:2]}" / "corpora"')
    assert not escapes_repository("docs/x.md", f"see [the README]({up}README.md)")
    assert not escapes_repository("tests/test_web.py", f'client.get("/static/{up}{up}store.db")')
    assert not escapes_repository("bench/x.py", f"ROOT = {here}.parents[1]")
    assert not escapes_repository("src/saexplain/data/corpus.py", f"X = {here}.parents[3]")
    assert not escapes_repository("src/x.py", "text... more text")
    mod = tmp_path / "m.py"
    mod.write_text("import os, sys as system\nfrom saexplain import cli\n    from saexplain.web.app import (create_app,\n"
                   "        x)\n")
    assert _imports(mod) == {"os", "sys", "saexplain", "saexplain.cli", "saexplain.web.app",
                             "saexplain.web.app.create_app"}


def test_nothing_reads_a_folder_beside_the_repository():
    bad = []
    for rel in repository_files():
        path = ROOT / rel
        corpus = "/default_corpus/" in rel or rel.startswith("tests/data/")
        if not rel.startswith(CHECKED) or path.suffix not in CODE or corpus:
            continue
        bad += escapes_repository(rel, path.read_text(encoding="utf-8", errors="replace"))
    assert not bad, "files that read outside the repository:\n" + "\n".join(bad)


def test_no_large_file_outside_the_allow_list():
    large = {rel: (ROOT / rel).stat().st_size for rel in repository_files()
             if (ROOT / rel).stat().st_size > MAX_BYTES}
    extra = {rel: size for rel, size in large.items() if rel not in LARGE_ALLOWED}
    assert not extra, f"files over 2 MB (keep them out of git, or regenerate them): {extra}"


IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+\(?([\w, ]*)|import\s+([\w., ]+))", re.M)


def _imports(path: Path) -> set[str]:
    """The modules a file imports (`from a.b import c` gives a.b and a.b.c). Read with a regular expression, not
    `ast`: CPython 3.11's parser can fail with "AST constructor recursion depth mismatch" late in a long process."""
    names = set()
    for frm, what, plain in IMPORT.findall(path.read_text(encoding="utf-8")):
        if frm:
            names.add(frm)
            names |= {f"{frm}.{w.strip()}" for w in what.split(",") if w.strip()}
        else:
            names |= {w.strip().split(" as ")[0] for w in plain.split(",") if w.strip()}
    return names


def test_dependencies_flow_one_way():
    """Nothing imports the CLI; the web UI, the Ray layer and the test helpers are imported only from their own
    package and the CLI (the stages below never depend on a face, a scale-out layer or a test fake); the LLM layer
    does not import the subject."""
    package = ROOT / "src" / "saexplain"
    faces = {"saexplain.cli": (), "saexplain.web": ("web",), "saexplain.distributed": ("distributed",),
             "saexplain.testing": ("testing",)}
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        for name in _imports(path):
            for face, own in faces.items():
                if (name == face or name.startswith(face + ".")) and rel.parts[0] not in own \
                        and not (face != "saexplain.cli" and rel.name == "cli.py"):
                    bad.append(f"{rel} imports {name}")
            if rel.parts[0] == "llm" and (name == "saexplain.subject" or name.startswith("saexplain.subject.")):
                bad.append(f"{rel} imports {name} (the LLM layer knows nothing of the subject)")
    assert not bad, "\n".join(bad)
