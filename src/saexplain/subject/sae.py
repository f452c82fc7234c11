"""SAE loading (SAELens folders, sparsify folders, sae_lens pretrained releases) into sae-lens classes, and
sparse encoding that never builds a dense [tokens × d_sae] output."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import SAE

from saexplain.errors import ConfigError
from saexplain.paths import home
from saexplain.registry import Registry
from saexplain.subject.model import torch_dtype

log = logging.getLogger(__name__)

SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")


SHIPPED_SAE = Path(__file__).with_name("default_sae")  # the default SAE as `saexplain train-sae` made it


def default_sae_dir() -> Path:
    """The default SAE's folder under $SAEXPLAIN_HOME. On first use the copy shipped with the package is
    installed there, its sha256 checked against SHA256SUMS; `saexplain train-sae --force` retrains it in place."""
    from saexplain.subject.default import DEFAULT_HOOKPOINT, DEFAULT_MODEL_NAME

    path = home() / "saes" / DEFAULT_MODEL_NAME / f"{DEFAULT_HOOKPOINT}-topk"
    if not (path / "sae_weights.safetensors").is_file() and (SHIPPED_SAE / "sae_weights.safetensors").is_file():
        install_shipped_sae(path)
    return path


def install_shipped_sae(path: Path) -> None:
    import hashlib
    import os
    import shutil

    sums = dict(reversed(line.split()) for line in (SHIPPED_SAE / "SHA256SUMS").read_text().splitlines() if line)
    for name, digest in sums.items():
        if hashlib.sha256((SHIPPED_SAE / name).read_bytes()).hexdigest() != digest:
            raise ConfigError(f"{SHIPPED_SAE / name}: the shipped default SAE is damaged (sha256 differs from "
                              f"SHA256SUMS); reinstall saexplain or run `saexplain train-sae`")
    path.mkdir(parents=True, exist_ok=True)
    for src in sorted(SHIPPED_SAE.iterdir()):  # weights last: their presence marks a complete install
        if src.suffix == ".json":
            shutil.copyfile(src, path / src.name)
    tmp = path / f"sae_weights.safetensors.tmp{os.getpid()}"
    shutil.copyfile(SHIPPED_SAE / "sae_weights.safetensors", tmp)
    os.replace(tmp, path / "sae_weights.safetensors")
    log.info("installed the shipped default SAE into %s", path)


# ---------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class SAEFormat:
    matches: Callable[[str], bool]
    load: Callable[[str, str, str], SAE]  # (spec, device, dtype) -> SAE


SAE_FORMATS: Registry[SAEFormat] = Registry("SAE format")


def _has(spec: str, files: tuple[str, ...]) -> bool:
    p = Path(spec).expanduser()
    return p.is_dir() and all((p / f).is_file() for f in files)


# sae-lens architectures saexplain cannot run, with why (one line instead of a traceback)
UNSUPPORTED = {
    "temporal": "a temporal SAE encodes each token from the tokens before it (sae-lens 'temporal'); saexplain's "
                "oracle and cache encode token by token, so its activations would be wrong",
}


def _load_saelens(spec: str, device: str, dtype: str) -> SAE:
    import json

    folder = Path(spec).expanduser()
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder / 'cfg.json'}: not a readable JSON SAE config ({e})") from None
    arch = cfg.get("architecture", "standard") if isinstance(cfg, dict) else None
    if arch is None:
        raise ConfigError(f"{folder / 'cfg.json'}: not a JSON object")
    if arch in UNSUPPORTED:
        raise ConfigError(f"{folder}: {UNSUPPORTED[arch]}")
    try:
        if _training_only(arch):
            return _load_training_checkpoint(folder, cfg, device, dtype)
        return SAE.load_from_disk(folder, device=device, dtype=dtype)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  an unknown architecture, a damaged or truncated weights file: one line
        msg = str(e).splitlines()[0] if str(e) else ""
        if isinstance(e, KeyError):
            msg = f"architecture {arch!r} is not one sae-lens {_sae_lens_version()} can load"
        raise ConfigError(f"{folder}: the SAE does not load ({type(e).__name__}: {msg})") from None


def _training_only(arch: str) -> bool:
    """An architecture sae-lens trains but runs as another one at inference (BatchTopK, Matryoshka-BatchTopK):
    its trainer's checkpoints say the training architecture."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    return arch in SAE_TRAINING_CLASS_REGISTRY and arch not in SAE_CLASS_REGISTRY


def _load_training_checkpoint(folder: Path, cfg: dict, device: str, dtype: str) -> SAE:
    """A BatchTopK / Matryoshka-BatchTopK checkpoint → the JumpReLU SAE it runs as at inference, converted by
    sae-lens itself (its threshold becomes the JumpReLU threshold)."""
    import tempfile

    from safetensors.torch import load_file
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class(cfg["architecture"])
    training = cls(cfg_cls.from_dict({**cfg, "device": "cpu", "dtype": "float32"}))
    training.load_state_dict(load_file(folder / "sae_weights.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        training.save_inference_model(tmp)
        sae = SAE.load_from_disk(tmp, device=device, dtype=dtype)
    log.info("%s: %s checkpoint loaded as the %s SAE it runs as at inference", folder, cfg["architecture"],
             sae.cfg.architecture())
    return sae


def _sae_lens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")


def _load_sparsify(spec: str, device: str, dtype: str) -> SAE:
    """EleutherAI sparsify folder (cfg.json + sae.safetensors) → a sae-lens TopKSAE.

    Our own converter: sae-lens 6.54's `sparsify_disk_loader` transposes W_dec (sparsify stores it as
    [num_latents, d_in], like sae-lens) and skips b_dec on the input when `normalize_decoder` is set, while
    sparsify always subtracts b_dec before encoding (unless the coder is a transcoder)."""
    import json
    import re

    from safetensors.torch import load_file

    folder = Path(spec).expanduser()
    raw = json.loads((folder / "cfg.json").read_text())
    if raw.get("activation", "topk") != "topk" or raw.get("skip_connection") or raw.get("transcode"):
        raise ConfigError(f"{folder}/cfg.json: only sparsify TopK SAEs without skip connection are supported")
    w = load_file(folder / "sae.safetensors")
    d_in = int(raw.get("d_in") or w["encoder.weight"].shape[1])
    d_sae = int(raw.get("num_latents") or d_in * raw["expansion_factor"])
    W_dec = w["W_dec"]
    if W_dec.shape != (d_sae, d_in):
        raise ConfigError(f"{folder}/sae.safetensors: W_dec has shape {tuple(W_dec.shape)}, expected {(d_sae, d_in)}")
    m = re.search(r"layers[._](\d+)", folder.name)
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": int(raw["k"]), "dtype": dtype,
           "device": device, "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": False,
           "metadata": {"hook_name": f"blocks.{m.group(1)}.hook_resid_post" if m else None, "prepend_bos": True}}
    sae = SAE.from_dict(cfg)
    state = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": w["encoder.bias"], "W_dec": W_dec,
             "b_dec": w["b_dec"]}
    sae.load_state_dict({k: v.to(torch_dtype(dtype)) for k, v in state.items()})
    return sae.to(device)


def _load_pretrained(spec: str, device: str, dtype: str) -> SAE:
    """`sae_lens:<release>:<sae_id>` through `sae_lens.SAE.from_pretrained` (needs the hub)."""
    try:
        _, release, sae_id = spec.split(":", 2)
    except ValueError:
        raise ConfigError(f"pretrained SAE spec {spec!r} must look like sae_lens:<release>:<sae_id>") from None
    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as e:  # network, unknown release, …: one line
        raise ConfigError(f"cannot load SAE {release}/{sae_id} via sae_lens: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _load_default(spec: str, device: str, dtype: str) -> SAE:
    path = default_sae_dir()
    if not _has(str(path), SAELENS_FILES):
        raise ConfigError(f"the default SAE is not installed ({path} is missing and this install ships none in "
                          f"{SHIPPED_SAE}): run `saexplain train-sae`")
    return _load_saelens(str(path), device, dtype)


SAE_FORMATS.register("default")(SAEFormat(lambda s: s == "default", _load_default))
SAE_FORMATS.register("saelens")(SAEFormat(lambda s: _has(s, SAELENS_FILES), _load_saelens))
SAE_FORMATS.register("sparsify")(SAEFormat(lambda s: _has(s, SPARSIFY_FILES), _load_sparsify))
SAE_FORMATS.register("pretrained")(SAEFormat(lambda s: s.startswith("sae_lens:"), _load_pretrained))


def load_sae(spec: str, device: str = "cpu", dtype: str = "float32") -> SAE:
    torch_dtype(dtype)  # validates the name
    for _name, fmt in SAE_FORMATS.items():
        if fmt.matches(spec):
            return fmt.load(spec, device, dtype)
    p = Path(spec).expanduser()
    if p.is_dir():
        raise ConfigError(f"SAE folder {spec} has neither {' + '.join(SAELENS_FILES)} (SAELens) nor "
                          f"{' + '.join(SPARSIFY_FILES)} (sparsify)")
    raise ConfigError(f"SAE not found: {spec!r} (a SAELens or sparsify folder, 'default', or "
                      "sae_lens:<release>:<sae_id>)")


def sae_hook_name(sae: SAE) -> str | None:
    return sae.cfg.metadata.get("hook_name")


def sae_prepend_bos(sae: SAE) -> bool:
    value = sae.cfg.metadata.get("prepend_bos")
    return True if value is None else bool(value)


# ---------------------------------------------------------------------------------------------- encoding
class SparseEncoder:
    """Per-architecture encoding of SAE inputs [N, d_in] into
    - `features(x, ids)`: activations of chosen features [N, len(ids)], computing only those columns where
      the architecture allows (ReLU, JumpReLU); TopK gathers from the top-k without scattering;
    - `topk(x, k)`: (values, indices) [N, k], descending — for TopK SAEs exactly the SAE's active set."""

    def __init__(self, sae: SAE):
        self.sae = sae

    def sae_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.process_sae_in(x)

    def features(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        acts = self.sae.encode(x)  # generic: dense, then select
        return acts[:, ids]

    def topk(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest activations by magnitude (an AbsTopK SAE's negative ones included, signed)."""
        acts = self.sae.encode(x)
        _, indices = acts.abs().topk(min(k, acts.shape[-1]), dim=-1)
        return acts.gather(-1, indices), indices

    def nonzeros(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All non-zero activations as CSR over tokens: (counts [N], indices [nnz], values [nnz])."""
        acts = self.dense(x)
        rows, cols = acts.nonzero(as_tuple=True)
        return torch.bincount(rows, minlength=len(x)), cols, acts[rows, cols]

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x)


ENCODERS: Registry[type[SparseEncoder]] = Registry("SAE architecture")


@ENCODERS.register("standard")
class ReLUEncoder(SparseEncoder):
    def _pre(self, x, ids=None):
        W, b = self.sae.W_enc, self.sae.b_enc
        if ids is not None:
            W, b = W[:, ids], b[ids]
        return self.sae_in(x) @ W + b

    def _act(self, pre, ids=None):
        return pre.relu()

    def features(self, x, ids):
        return self._act(self._pre(x, ids), ids)

    def dense(self, x):
        return self._act(self._pre(x))

    def topk(self, x, k):
        acts = self._act(self._pre(x))
        return acts.topk(min(k, acts.shape[-1]), dim=-1)


@ENCODERS.register("jumprelu")
class JumpReLUEncoder(ReLUEncoder):
    def _act(self, pre, ids=None):
        threshold = self.sae.threshold if ids is None else self.sae.threshold[ids]
        return pre.relu() * (pre > threshold).to(pre.dtype)


@ENCODERS.register("topk")
class TopKEncoder(SparseEncoder):
    def _active(self, x):
        pre = self.sae_in(x) @ self.sae.W_enc + self.sae.b_enc
        if self.sae.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.sae.W_dec.norm(dim=-1)
        values, indices = pre.topk(self.sae.cfg.k, dim=-1, sorted=True)
        return values.relu(), indices

    def features(self, x, ids):
        values, indices = self._active(x)  # [N, k]
        match = indices.unsqueeze(-1) == ids.view(1, 1, -1)  # [N, k, F]
        return (values.unsqueeze(-1) * match.to(values.dtype)).sum(dim=1)

    def topk(self, x, k):
        values, indices = self._active(x)
        return values[:, :k], indices[:, :k]

    def nonzeros(self, x):
        values, indices = self._active(x)  # straight from the top-k, never scattered to [N, d_sae]
        keep = values > 0
        return keep.sum(dim=1), indices[keep], values[keep]


def encoder_for(sae: SAE) -> SparseEncoder:
    arch = sae.cfg.architecture()
    cls = ENCODERS.get(arch) if arch in ENCODERS else SparseEncoder
    return cls(sae)
