"""EleutherAI delphi's per-latent files: `explanations/<module>_latent<i>.txt` holds the explanation as a JSON
string, `scores/<scorer>/<module>_latent<i>.txt` the scorer's output as JSON (what delphi's
`explainer_postprocess` / `scorer_postprocess` write). delphi keeps one explainer per folder, so each method of
the run gets its own folder. Detection and fuzzing are written as delphi's list of ClassifierOutput records
(`str_tokens` holds the window's text as one string: saexplain keeps the text, not the tokens, of a judged
window; `distance` is the window's decile, -1 for negatives); other scorers, which delphi does not have or
shapes differently, as `{"score": value, "details": ...}`. Only ok explanations and ok scores are exported."""

from __future__ import annotations

import json

from saexplain.export import EXPORTS, ExportOptions, run_info
from saexplain.status import Status
from saexplain.store import Store


def _classifier(details: dict) -> list[dict]:
    out = []
    for w in details.get("windows", []):
        dec = w.get("decile")
        distance = -1 if not w.get("truth") else (0 if dec in (None, "top") else int(dec) if str(dec).isdigit() else 0)
        p = w.get("p_yes")
        out.append({"str_tokens": [w.get("text", "")], "activations": [w.get("max_act", 0.0)],
                    "distance": distance, "activating": bool(w.get("truth")),
                    "prediction": None if p is None else bool(p > 0.5), "probability": p,
                    "correct": None if p is None else bool((p > 0.5) == bool(w.get("truth")))})
    return out


@EXPORTS.register("delphi")
def export(db: Store, run_id: int, opts: ExportOptions) -> dict[str, bytes]:
    info = run_info(db, run_id)
    module = opts.sae_id or info["hookpoint"]
    files: dict[str, bytes] = {}
    exps = {e["id"]: e for e in db.explanations(run_id) if e["status"] == Status.OK}
    for e in exps.values():
        files[f"{e['method']}/explanations/{module}_latent{e['feature']}.txt"] = json.dumps(
            e["description"], ensure_ascii=False).encode()
    for s in db.scores(run_id):
        e = exps.get(s["explanation_id"])
        if e is None or s["status"] != Status.OK:
            continue
        body = _classifier(s["details"]) if s["scorer"] in ("detection", "fuzzing") and s["details"].get("windows") \
            else {"score": s["value"], "details": s["details"]}
        files[f"{e['method']}/scores/{s['scorer']}/{module}_latent{e['feature']}.txt"] = json.dumps(
            body, ensure_ascii=False, default=float).encode()
    return files
