"""Exports of a run's explanations and scores in other tools' formats. A format is one module here,
registered once in `EXPORTS` (name → function(db, run_id, ExportOptions) → {relative path: bytes}); the CLI's
`export --format` choices and the web UI's download links come from the registry."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from saexplain.errors import SaexplainError
from saexplain.registry import Registry
from saexplain.store import Store

EXPORTS: Registry = Registry("export format")


@dataclass
class ExportOptions:
    model_id: str | None = None  # Neuronpedia modelId (default: from the run's subject model)
    sae_id: str | None = None  # Neuronpedia's `layer` (SAE id); delphi's module name (default: the hookpoint)


def run_info(db: Store, run_id: int) -> dict:
    r = db.run(run_id)
    if r["kind"] != "run":
        raise SaexplainError(f"run {run_id} is a {r['kind']} run, not an explain/score run")
    cfg = json.loads(r["config_json"])
    subject = cfg.get("subject", {})
    model = subject.get("model") or "default"
    model_id = "gemma-3-270m" if model == "default" else Path(model.rstrip("/")).name
    hook = subject.get("hookpoint") or _sae_hook(subject.get("sae", "default"))
    return {"config": cfg, "model_id": model_id, "hookpoint": hook, "llm": cfg.get("llm", {}).get("llm") or "default"}


def _sae_hook(sae: str) -> str:
    """The SAE's own hookpoint when the run left it to the SAE (sae-lens's cfg.json `hook_name`)."""
    if sae == "default":
        return "layers.6"
    try:
        cfg = json.loads((Path(sae) / "cfg.json").read_text())
        return cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name") or "sae"
    except (OSError, ValueError, AttributeError):
        return "sae"


def export_files(db: Store, run_id: int, fmt: str, options: ExportOptions | None = None) -> dict[str, bytes]:
    _load_formats()
    return EXPORTS.get(fmt)(db, run_id, options or ExportOptions())


def write_export(files: dict[str, bytes], out: Path) -> list[Path]:
    written = []
    for rel, data in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    return written


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, data in sorted(files.items()):
            z.writestr(rel, data)
    return buf.getvalue()


def formats() -> list[str]:
    _load_formats()
    return sorted(EXPORTS)


def _load_formats() -> None:
    from saexplain.export import delphi, neuronpedia  # noqa: F401  (registration)
