"""Hand-written explanations (a true description, a human baseline) stored in a run as a method of their own, so
that `saexplain score` judges them on the same windows, with the same judge, as the run's explainers."""

from __future__ import annotations

import json
from pathlib import Path

from saexplain.errors import SaexplainError
from saexplain.explain import EXPLAINERS
from saexplain.explain.rules import clean_text
from saexplain.status import Status
from saexplain.store import Store


def read_hand_written(features: list[int], texts: list[str], path: Path | None, method: str
                      ) -> list[tuple[int, str, str]]:
    """(feature, method, text) of hand-written explanations from --feature/--text pairs and a --texts file."""
    if len(features) != len(texts):
        raise SaexplainError(f"--feature and --text come in pairs (got {len(features)} features, {len(texts)} texts)")
    out = [(f, method, t) for f, t in zip(features, texts)]
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SaexplainError(f"--texts {path}: {e.strerror or e}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith("{"):
                    row = json.loads(line)
                    out.append((int(row["feature"]), str(row.get("method") or method), str(row["text"])))
                else:
                    f, t = line.split("\t", 1)
                    out.append((int(f), method, t))
            except (ValueError, KeyError, TypeError):
                raise SaexplainError(f"--texts {path}, line {i}: expected {{\"feature\": N, \"text\": \"...\"}} or "
                                     f"N<TAB>text") from None
    for _, m, _ in out:
        if m.partition("@")[0] in EXPLAINERS or not m.replace("-", "").replace("_", "").isalnum():
            raise SaexplainError(f"--method {m!r}: hand-written explanations need a name of their own (letters, "
                                 f"digits, - and _; not an explainer's: {', '.join(EXPLAINERS)})")
    return [(f, m, clean_text(t)) for f, m, t in out if clean_text(t)]


def put_hand_written(db: Store, run_id: int, written: list[tuple[int, str, str]]) -> int:
    """Store hand-written explanations in the run (a text already stored for its feature and method is kept
    with its scores); returns how many were new."""
    added = 0
    for f, m, t in written:
        have = db.explanations(run_id, feature=f, method=m)
        if have and have[0]["description"] == t and have[0]["status"] == Status.OK:
            continue
        db.put_explanation(run_id, f, m, t, [], {"source": "hand-written"}, {}, [], config_hash="hand-written")
        added += 1
    return added
