"""A stored explainer trace as readable text (`saexplain trace`)."""

from __future__ import annotations

import json
from typing import Any


def _probe_line(c: dict[str, Any]) -> str:
    marks = []
    for tok, a in zip(c.get("tokens", []), c.get("acts", [])):
        marks.append(f"[{tok.strip() or repr(tok)} {a:.2f}]" if a > 0 else tok.strip() or repr(tok))
    verdict = "as expected" if c["consistent"] else "NOT as expected"
    return (f"PROBE  H{c['hypothesis']}: \"{c['probe']}\" expected {c['expected']}, max {c['measured']:.2f} "
            f"({c['relative']:.0%} of the feature's max) → {verdict}\n       tokens: {' '.join(marks)}")


def format_trace(steps: list[dict[str, Any]], explanation: dict[str, Any]) -> str:
    out = [f"feature {explanation['feature']} · {explanation['method']} · run {explanation['run_id']}", ""]
    for s in steps:
        kind, c = s["kind"], s["content"]
        if kind == "prompt":
            step = c.get("step", "") if isinstance(c, dict) else ""
            text = c.get("text", c) if isinstance(c, dict) else c
            out.append(f"PROMPT {step}\n" + "\n".join("   " + line for line in str(text).splitlines()))
        elif kind == "reply":
            body = json.dumps(c.get("json"), ensure_ascii=False) if isinstance(c, dict) and "json" in c else str(c)
            step = c.get("step", "") if isinstance(c, dict) else ""
            out.append(f"REPLY  {step}: {body}")
        elif kind == "probe":
            out.append(_probe_line(c))
        elif kind == "exemplars":
            out.append("EXEMPLARS\n" + "\n".join("   " + line for line in str(c).splitlines()))
        else:
            out.append(f"{kind.upper():6} {json.dumps(c, ensure_ascii=False)}")
    out += ["", f"FINAL  {explanation['description']}"]
    if explanation.get("labels"):
        out.append("LABELS " + " | ".join(explanation["labels"]))
    if explanation.get("error"):
        out.append(f"ERROR  {explanation['error']}")
    usage = explanation.get("usage") or {}
    out.append(f"USAGE  {usage.get('calls', 0)} LLM calls, {usage.get('tokens_in', 0)} tokens in, "
               f"{usage.get('tokens_out', 0)} out, {explanation.get('seconds', 0):.1f}s")
    return "\n".join(out)
