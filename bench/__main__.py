"""python -m bench                   the maintained benchmarks, one line each
python -m bench NAME [options]    run one (NAME --help: its options); raw results go to bench/results/NAME.json
python -m bench NAME --report     print NAME's figures from its committed raw file, running nothing

A benchmark is a module of this folder with a `main()`; one with a `report()` prints its own report from its raw
files, the others print their figures as `name: value` lines."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def benchmarks() -> dict[str, str]:
    """name → the first line of its docstring, for every module of bench/ with a main() (read, not imported)."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out[path.stem] = (ast.get_docstring(tree) or "").split("\n")[0]
    return out


def main(argv: list[str]) -> int:
    known = benchmarks()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__.split("\n\n")[0] + "\n")
        width = max(map(len, known))
        for name, line in known.items():
            print(f"  {name:<{width}}  {line}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in known:
        print(f"error: no benchmark {name!r} (known: {', '.join(known)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    if rest == ["--report"]:
        from bench.common import load, provenance, report_lines

        if hasattr(module, "report"):
            if (HERE / "results" / f"{name}.json").is_file():
                print(provenance(load(name)))
            else:  # a study of several runs: a folder of raw files, each row naming its own commit
                print(f"# {name}: the raw files under bench/results/{name}/ (each row's commit in the table)")
            module.report()
        else:
            print("\n".join(report_lines(load(name))))
        return 0
    sys.argv = [f"python -m bench {name}", *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
