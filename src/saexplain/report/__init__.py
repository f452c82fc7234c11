"""The report of a run, rebuilt from the store alone: method × scorer means with bootstrap 95 % confidence
intervals over features, paired differences against a baseline method, LLM usage per method and scorer, and a
PNG of the score distributions. Written as markdown, JSON and PNG."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from saexplain.status import Status
from saexplain.store import Store

BOOTSTRAP = 2000


def bootstrap_ci(values: list[float], seed: int = 0, n: int = BOOTSTRAP) -> tuple[float | None, ...]:
    """(mean, low, high): percentile bootstrap 95 % CI of the mean over the given per-feature values
    (None, None, None without values: JSON has no NaN)."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return None, None, None
    if len(v) == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(store: Store, run_id: int, baseline: str | None = None,
              include_degraded: bool = False) -> dict[str, Any]:
    """Only ok scores of ok explanations enter the table and the comparisons (degraded ones too with
    `include_degraded`, where they have a value); degraded and failed ones are counted per cell."""
    run = store.run(run_id)
    config = json.loads(run["config_json"])
    explanations = store.explanations(run_id)
    scores = store.scores(run_id)
    methods = [m.strip() for m in config.get("run", {}).get("explainers", "").split(",") if m.strip()]
    methods += sorted({e["method"] for e in explanations} - set(methods))
    scorers = [m.strip() for m in config.get("run", {}).get("scorers", "").split(",") if m.strip()]
    scorers += sorted({s["scorer"] for s in scores} - set(scorers))
    if baseline is None:
        baseline = "oneshot" if "oneshot" in methods else (methods[0] if methods else None)

    value: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    degraded: dict[tuple[str, str], int] = defaultdict(int)
    for s in scores:
        key = (s["method"], s["scorer"])
        if s["status"] == Status.FAILED:
            failed[key] += 1
        elif s["status"] == Status.DEGRADED:
            degraded[key] += 1
            if include_degraded and s["value"] is not None:
                value[key][s["feature"]] = s["value"]
        else:
            value[key][s["feature"]] = s["value"]

    table = {}
    for m in methods:
        for sc in scorers:
            vals = value.get((m, sc), {})
            mean, lo, hi = bootstrap_ci(list(vals.values()))
            table[f"{m}|{sc}"] = {"method": m, "scorer": sc, "mean": mean, "ci95": [lo, hi], "n": len(vals),
                                  "failed": failed.get((m, sc), 0), "degraded": degraded.get((m, sc), 0)}
    paired = {}
    if baseline:
        for m in methods:
            if m == baseline:
                continue
            for sc in scorers:
                a, b = value.get((m, sc), {}), value.get((baseline, sc), {})
                common = sorted(set(a) & set(b))
                diffs = [a[f] - b[f] for f in common]
                mean, lo, hi = bootstrap_ci(diffs)
                paired[f"{m}|{sc}"] = {"method": m, "baseline": baseline, "scorer": sc, "delta": mean,
                                       "ci95": [lo, hi], "n": len(common), "wins": sum(d > 0 for d in diffs),
                                       "losses": sum(d < 0 for d in diffs), "ties": sum(d == 0 for d in diffs)}
    usage: dict[str, dict[str, float]] = {}
    explanation_status = {m: {st: sum(1 for e in explanations if e["method"] == m and e["status"] == st)
                              for st in Status} for m in methods}
    for m in methods:
        rows = [e for e in explanations if e["method"] == m and e["status"] == Status.OK]
        if rows:
            usage[m] = {"features": len(rows),
                        "llm_calls": float(np.mean([e["usage"].get("calls", 0) for e in rows])),
                        "tokens": float(np.mean([e["usage"].get("tokens_in", 0) + e["usage"].get("tokens_out", 0)
                                                 for e in rows])),
                        "tokens_out": float(np.mean([e["usage"].get("tokens_out", 0) for e in rows])),
                        "seconds": float(np.mean([e["seconds"] for e in rows])),
                        "degraded": explanation_status[m]["degraded"], "failed": explanation_status[m]["failed"]}
    scorer_usage = {}
    for sc in scorers:
        rows = [s for s in scores if s["scorer"] == sc and s["status"] == Status.OK]
        if rows:
            scorer_usage[sc] = {"scored": len(rows),
                                "llm_calls": float(np.mean([s["usage"].get("calls", 0) for s in rows])),
                                "tokens": float(np.mean([s["usage"].get("tokens_in", 0) + s["usage"].get("tokens_out", 0)
                                                         for s in rows])),
                                "seconds": float(np.mean([s["seconds"] for s in rows]))}
    per_feature = defaultdict(dict)
    for e in explanations:
        per_feature[e["feature"]][e["method"]] = {
            "description": e["description"], "labels": e["labels"], "error": e["error"], "status": e["status"],
            "redo_error": e.get("redo_error"),
            "scores": {sc: value.get((e["method"], sc), {}).get(e["feature"]) for sc in scorers}}
    return {"run_id": run_id, "config": config, "methods": methods, "scorers": scorers, "baseline": baseline,
            "table": table, "paired": paired, "usage": usage, "scorer_usage": scorer_usage,
            "explanation_status": explanation_status, "include_degraded": include_degraded,
            "features": {str(k): v for k, v in sorted(per_feature.items())},
            "values": {f"{m}|{sc}": {str(f): v for f, v in vals.items()} for (m, sc), vals in value.items()}}


def _fmt(mean: float | None, ci: list[float | None]) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    subject, llm, sampling = cfg.get("subject", {}), cfg.get("llm", {}), cfg.get("sampling", {})
    lines = [f"# saexplain run {summary['run_id']}", "",
             f"Subject: `{subject.get('model')}` + SAE `{subject.get('sae')}`; explainer/judge LLM: "
             f"`{llm.get('llm')}`; sampling seed {sampling.get('seed')} (the same score-pool windows and the same "
             f"LLM judge every method). Values: mean over features with bootstrap 95 % CI; n = features with an ok score "
             f"({'degraded scores with a value included' if summary['include_degraded'] else 'degraded and failed scores are counted, not averaged'}).", "",
             "## Scores", "", "| method | " + " | ".join(summary["scorers"]) + " |",
             "|---|" + "---|" * len(summary["scorers"])]
    for m in summary["methods"]:
        cells = []
        for sc in summary["scorers"]:
            t = summary["table"][f"{m}|{sc}"]
            cell = f"{_fmt(t['mean'], t['ci95'])} (n={t['n']})"
            if t["degraded"]:
                cell += f", {t['degraded']} degraded"
            if t["failed"]:
                cell += f", {t['failed']} failed"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["paired"]:
        lines += ["", f"## Paired differences against {summary['baseline']} (same features)", "",
                  "| method | " + " | ".join(summary["scorers"]) + " |", "|---|" + "---|" * len(summary["scorers"])]
        for m in summary["methods"]:
            if m == summary["baseline"]:
                continue
            cells = []
            for sc in summary["scorers"]:
                p = summary["paired"][f"{m}|{sc}"]
                counts = f"; {p['wins']} higher, {p['losses']} lower" if "wins" in p else ""
                cells.append(f"{p['delta']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (n={p['n']}{counts})"
                             if p["n"] else "–")
            lines.append(f"| {m} − {summary['baseline']} | " + " | ".join(cells) + " |")
    lines += ["", "## Explanations by status", "",
              "Only ok explanations are scored; degraded ones (an explainer that finished without a step it needed, "
              "e.g. an LLM fault) and failed ones are left out of every comparison and retried by the next run.", "",
              "| explainer | ok | degraded | failed |", "|---|---|---|---|"]
    for m, st in summary["explanation_status"].items():
        lines.append(f"| {m} | {st['ok']} | {st['degraded']} | {st['failed']} |")
    lines += ["", "## Cost per feature", "", "| explainer | features | LLM calls | tokens (in+out) | tokens out | seconds |",
              "|---|---|---|---|---|---|"]
    for m, u in summary["usage"].items():
        lines.append(f"| {m} | {u['features']} | {u['llm_calls']:.1f} | {u['tokens']:.0f} | {u['tokens_out']:.0f} "
                     f"| {u['seconds']:.1f} |")
    lines += ["", "| scorer | explanations | LLM calls | tokens (in+out) | seconds |", "|---|---|---|---|---|"]
    for sc, u in summary["scorer_usage"].items():
        lines.append(f"| {sc} | {u['scored']} | {u['llm_calls']:.1f} | {u['tokens']:.0f} | {u['seconds']:.1f} |")
    lines += ["", "## Explanations", "", "| feature | method | explanation | " + " | ".join(summary["scorers"]) + " |",
              "|---|---|---|" + "---|" * len(summary["scorers"])]
    for f, by_method in summary["features"].items():
        for m, e in by_method.items():
            text = e["description"] if e["status"] == Status.OK else f"{e['status'].upper()} ({e['error']}): {e['description']}"
            if e.get("redo_error"):
                text += f" (a later attempt did not replace it: {e['redo_error']})"
            text = text.replace("|", "\\|").replace("\n", " ")
            vals = [("–" if e["scores"][sc] is None else f"{e['scores'][sc]:.2f}") for sc in summary["scorers"]]
            lines.append(f"| {f} | {m} | {text} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers, methods = summary["scorers"], summary["methods"]
    fig, axes = plt.subplots(1, max(1, len(scorers)), figsize=(3.2 * max(1, len(scorers)), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, sc in zip(axes[0], scorers):
        for i, m in enumerate(methods):
            vals = list(summary["values"].get(f"{m}|{sc}", {}).values())
            t = summary["table"][f"{m}|{sc}"]
            if vals and t["mean"] is not None:
                ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=12, alpha=0.6)
                ax.errorbar(i + 0.25, t["mean"], yerr=[[t["mean"] - t["ci95"][0]], [t["ci95"][1] - t["mean"]]],
                            fmt="o", color="black", capsize=3)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(sc)
    fig.suptitle(f"run {summary['run_id']}: per-feature scores, mean ± 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(store: Store, run_id: int, folder: Path, baseline: str | None = None,
                 include_degraded: bool = False) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(store, run_id, baseline, include_degraded)
    paths = {"markdown": folder / "report.md", "json": folder / "report.json", "png": folder / "report.png"}
    paths["markdown"].write_text(markdown(summary))
    paths["json"].write_text(json.dumps(summary, indent=1, default=float, allow_nan=False) + "\n")
    plot(summary, paths["png"])
    return paths
