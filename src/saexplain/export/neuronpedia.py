"""Neuronpedia's explanation export shape: a JSON list of Explanation objects (`modelId`, `layer` = the SAE id,
`index` as a string, `description`, `typeName`, `explanationModelName`, `authorId`) each with its `scores`
(`value`, `explanationScoreTypeName`, `explanationScoreModelName`, `jsonDetails` as a JSON string) — the fields
of Neuronpedia's Explanation and ExplanationScore tables. Only ok explanations and ok scores are exported;
`saexplain train --references FILE` reads this file back."""

from __future__ import annotations

import json

from saexplain.export import EXPORTS, ExportOptions, run_info
from saexplain.status import Status
from saexplain.store import Store


@EXPORTS.register("neuronpedia")
def export(db: Store, run_id: int, opts: ExportOptions) -> dict[str, bytes]:
    info = run_info(db, run_id)
    model_id = opts.model_id or info["model_id"]
    layer = opts.sae_id or f"{info['hookpoint']}-saexplain"
    scores: dict[int, list[dict]] = {}
    for s in db.scores(run_id):
        if s["status"] == Status.OK and s["value"] is not None:
            scores.setdefault(s["explanation_id"], []).append({
                "value": s["value"], "explanationScoreTypeName": f"saexplain-{s['scorer']}",
                "explanationScoreModelName": info["llm"],
                "jsonDetails": json.dumps(s["details"], ensure_ascii=False, default=float)})
    rows = []
    for e in db.explanations(run_id):
        if e["status"] != Status.OK:
            continue
        rows.append({"modelId": model_id, "layer": layer, "index": str(e["feature"]),
                     "description": e["description"], "typeName": f"saexplain-{e['method']}",
                     "explanationModelName": info["llm"], "authorId": "saexplain",
                     "notes": f"saexplain run {run_id}", "scores": scores.get(e["id"], [])})
    return {f"neuronpedia-run{run_id}.json": (json.dumps(rows, indent=1, ensure_ascii=False) + "\n").encode()}
