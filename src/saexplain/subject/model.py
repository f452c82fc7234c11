"""The subject language model: loading (HF id / folder / GGUF / the offline default), tokenisation that
matches the SAE's training (BOS), and a forward pass truncated right after the hooked block."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from saexplain.devices import check_device  # noqa: F401  (explain/saeexplainer.py imports it from here)
from saexplain.errors import ConfigError, SaexplainError
from saexplain.registry import Registry
from saexplain.subject.hookpoints import Hookpoint

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} not supported (use one of {', '.join(DTYPES)})") from None


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class ModelSource:
    """How to turn a model spec string into (model, tokenizer). `matches` decides auto-detection."""

    matches: Callable[[str], bool]
    load: Callable[[str, torch.dtype, str], tuple[nn.Module, object]]


MODEL_SOURCES: Registry[ModelSource] = Registry("model source")


def _load_hf(spec: str, dtype: torch.dtype, device: str, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.exists():
        raise ConfigError(f"model folder not found: {spec}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else spec, dtype=dtype, **kwargs)
    except OSError as e:
        raise ConfigError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tokenizer


def _load_gguf(spec: str, dtype: torch.dtype, device: str):
    """`path/to/model.gguf`, or `repo_id#file.gguf` on the hub. transformers dequantises to `dtype`."""
    spec = spec.removeprefix("gguf:")
    if "#" in spec:
        repo, fname = spec.split("#", 1)
    else:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise ConfigError(f"GGUF file not found: {spec}")
        repo, fname = str(p.parent), p.name
    return _load_hf(repo, dtype, device, gguf_file=fname)


def _load_default(spec: str, dtype: torch.dtype, device: str):
    from saexplain.subject.default import default_model_dir

    return _load_hf(str(default_model_dir()), dtype, device)


MODEL_SOURCES.register("default")(ModelSource(lambda s: s == "default", _load_default))
MODEL_SOURCES.register("gguf")(ModelSource(lambda s: s.endswith(".gguf") or s.startswith("gguf:"), _load_gguf))
MODEL_SOURCES.register("hf")(ModelSource(lambda s: True, lambda s, d, dev: _load_hf(s.removeprefix("hf:"), d, dev)))


def load_model_and_tokenizer(spec: str, dtype: str = "float32", device: str = "cpu"):
    for name, source in MODEL_SOURCES.items():
        if source.matches(spec):
            log.info("loading model %s via %s", spec, name)
            return source.load(spec, torch_dtype(dtype), device)
    raise ConfigError(f"no model source understands {spec!r}")  # unreachable: 'hf' matches everything


# ----------------------------------------------------------------------------------- module discovery
_LAYER_PATHS = ["model.layers", "model.language_model.layers", "model.model.layers", "transformer.h",
                "gpt_neox.layers", "model.decoder.layers"]
_NORM_PATHS = ["model.norm", "model.language_model.norm", "model.model.norm", "transformer.ln_f",
               "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"]


def _get_path(root: nn.Module, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError(f"cannot find the transformer blocks of {type(model).__name__} (tried {', '.join(_LAYER_PATHS)})")


def find_final_norm(model: nn.Module) -> nn.Module:
    for path in _NORM_PATHS:
        norm = _get_path(model, path)
        if isinstance(norm, nn.Module):
            return norm
    raise ConfigError(f"cannot find the final norm of {type(model).__name__} (tried {', '.join(_NORM_PATHS)})")


# ------------------------------------------------------------------------------------- the subject
class _StopForward(Exception):
    pass


class SubjectModel:
    """A causal LM with one residual-stream hookpoint. `hidden()` runs the blocks up to the hookpoint only."""

    def __init__(self, model: nn.Module, tokenizer, hookpoint: str | Hookpoint, name: str = "model",
                 prepend_bos: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.hookpoint = hookpoint if isinstance(hookpoint, Hookpoint) else Hookpoint.parse(hookpoint)
        self.layers = find_layers(model)
        self.prepend_bos = prepend_bos
        n = len(self.layers)
        if not (0 <= self.hookpoint.layer < n + (self.hookpoint.position == "pre")):
            raise ConfigError(f"hookpoint {self.hookpoint.saelens_name}: {name} has {n} blocks (0..{n - 1})")
        if prepend_bos and tokenizer.bos_token_id is None:
            raise ConfigError(f"{name}: the SAE expects a BOS token but the tokenizer has none")
        self.d_model = int(model.get_input_embeddings().weight.shape[1])
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30

    @classmethod
    def load(cls, spec: str, hookpoint: str, dtype: str = "float32", device: str = "cpu",
             prepend_bos: bool = True) -> SubjectModel:
        model, tokenizer = load_model_and_tokenizer(spec, dtype, device)
        return cls(model, tokenizer, hookpoint, name=spec, prepend_bos=prepend_bos)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- tokenisation
    def tokenize(self, texts: Sequence[str]) -> list[tuple[list[int], list[str]]]:
        """Per text: token ids (BOS first when the SAE was trained with it) and the display string of each
        *text* token (BOS excluded), spaces kept, so that ''.join(strings) reproduces the text."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        bos = [self.tokenizer.bos_token_id] if self.prepend_bos else []
        for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
            if len(ids) + len(bos) > self.max_positions:
                raise SaexplainError(
                    f"text of {len(ids)} tokens exceeds {self.name}'s context of {self.max_positions}: "
                    f"{text[:40]!r}…")
            out.append((bos + list(ids), _display_strings(text, offsets)))
        return out

    # -- forward
    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Residual stream at the hookpoint, [batch, seq, d_model]; blocks after it never run."""
        captured: dict[str, torch.Tensor] = {}

        def grab(tensor):
            captured["h"] = tensor[0] if isinstance(tensor, tuple) else tensor
            raise _StopForward

        if self.hookpoint.last_block >= 0:
            handle = self.layers[self.hookpoint.last_block].register_forward_hook(lambda m, a, out: grab(out))
        else:  # blocks.0.hook_resid_pre: the (scaled) embeddings entering block 0
            handle = self.layers[0].register_forward_pre_hook(
                lambda m, a, kw: grab(a[0] if a else kw["hidden_states"]), with_kwargs=True)
        try:
            self.model(input_ids=input_ids.to(self.device),
                       attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                       use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "h" not in captured:
            raise SaexplainError(f"the hook at {self.hookpoint.saelens_name} never fired in {self.name}")
        return captured["h"]

    # -- output side, for the logit lens
    def final_norm(self) -> nn.Module:
        return find_final_norm(self.model)

    def unembedding(self) -> torch.Tensor:
        """[vocab, d_model] output embedding matrix."""
        return self.model.get_output_embeddings().weight


def _display_strings(text: str, offsets) -> list[str]:
    """Token display strings from character offsets; a token's string runs up to the next token's start so
    spaces are kept (some tokenizers leave the leading space out of a token's span)."""
    starts = [s for s, _ in offsets]
    strings = []
    for i, (s, e) in enumerate(offsets):
        nxt = starts[i + 1] if i + 1 < len(offsets) else len(text)
        strings.append(text[s:max(e, nxt)] if nxt >= s else text[s:e])
    if offsets and starts[0] > 0:  # leading characters (e.g. a space) not covered by the first span
        strings[0] = text[: starts[0]] + strings[0]
    return strings
