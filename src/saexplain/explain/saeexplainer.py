"""SAEExplainer's explainer model (He et al., arXiv 2606.08496): a language model of the subject's family reads
a fixed prompt holding one placeholder token; a hook at an early block adds the feature's SAE decoder vector
at the placeholder position, scaled to the hidden-state norm there, and the model writes the explanation.

A text-evidence variant (`evidence="text"`) conditions on the top windows of the explain pool instead, so that
explainers of another family can be trained the same way (train/ fine-tunes either with SFT and DPO).

The trained adapters of a training folder are merged in order (SFT, round 1, round 2): `stage` picks how far.
Explanations need no LLM calls; the explainer model runs in-process (transformers)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from saexplain.batching import Batcher, alone
from saexplain.config import Config
from saexplain.errors import ConfigError
from saexplain.explain.base import EXPLAINERS, Explainer, Explanation, Tracer
from saexplain.explain.oneshot import examples_evidence
from saexplain.fingerprint import path_fingerprint
from saexplain.llm.prompts import template
from saexplain.sampling.record import FeatureRecord

if TYPE_CHECKING:
    import torch

STAGES = ("base", "sft", "round1", "round2")


class SAEExplainerConfig(Config):
    cli_prefix: ClassVar[str] = "saex_"
    speed_fields: ClassVar[frozenset[str]] = frozenset({"device"})
    model: str = Field("default", description="explainer LM (same family as the subject for evidence=vector)")
    evidence: Literal["vector", "text"] = Field("vector", description="decoder vector injected at the "
                                                "placeholder, or the explain pool's top windows as text")
    placeholder: str = Field("<unused0>", description="the placeholder token (one token of the explainer's vocab)")
    block: int = Field(1, ge=0, description="inject at the output of this block")
    scale: float = Field(1.0, gt=0, description="injected norm = scale × the hidden-state norm at the placeholder")
    examples: int = Field(8, ge=1, description="evidence=text: top windows shown")
    window: int = Field(20, ge=4, description="evidence=text: tokens per window")
    max_new_tokens: int = Field(32, ge=4, description="explanation length cap (tokens)")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    no_repeat_ngram: int = Field(3, ge=0, description="never repeat an n-gram of this many tokens in an "
                                 "explanation (greedy decoding of a small model loops: '(or) (or) (or)'); 0: off")
    device: str = Field("cpu", description="torch device of the explainer LM (cuda on a GPU)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="explainer LM dtype (bfloat16 "
                                                             "on a GPU; on a CPU float32 is faster)")
    train_dir: str | None = Field(None, description="a `saexplain train` folder: its adapters and explainer "
                                  "settings are used")
    stage: Literal["base", "sft", "round1", "round2"] = Field("round2", description="adapters merged from "
                                                              "train_dir: base (none), sft, round1, round2")

    def resolved(self) -> SAEExplainerConfig:
        """With a train_dir, the explainer settings it was trained with (only stage/length/temperature kept)."""
        if not self.train_dir:
            return self
        saved = Path(self.train_dir).expanduser() / "explainer.json"
        if not saved.is_file():
            raise ConfigError(f"{self.train_dir} is not a training folder (no explainer.json): run "
                              f"`saexplain train sft` first")
        base = SAEExplainerConfig.load(saved)  # a field added since takes its default
        return base.model_copy(update={"train_dir": self.train_dir, "stage": self.stage,
                                       "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                       "no_repeat_ngram": self.no_repeat_ngram, "device": self.device,
                                       "dtype": self.dtype})

    def adapters(self) -> list[Path]:
        """The adapter folders of `stage`, in the order they are merged."""
        if self.stage == "base":
            return []
        if not self.train_dir:
            raise ConfigError(f"saeexplainer stage {self.stage!r} needs --saex-train-dir (or use stage base)")
        chain = [Path(self.train_dir).expanduser() / s / "adapter" for s in STAGES[1:STAGES.index(self.stage) + 1]]
        for p in chain:
            if not (p / "adapter_config.json").is_file():
                raise ConfigError(f"adapter not trained yet: {p} (run `saexplain train` for {p.parent.name})")
        return chain


class Injector:
    """Adds `scale × ‖h‖ × v/‖v‖` to the residual stream at the placeholder positions, at the output of one block.

    `vectors` is [rows, d] (one per batch row) or [d] / [1, d] (all rows); None: the hook does nothing. Positions come
    from the input ids seen by the embedding layer, so left padding, flushed batches and KV-cache generation
    (later steps hold no placeholder) are handled."""

    def __init__(self, model: torch.nn.Module, token_id: int, block: int, scale: float):
        from saexplain.subject.model import find_layers

        layers = find_layers(model)
        if not 0 <= block < len(layers) - 1:  # after the last block, no later token could read it
            raise ConfigError(f"inject block {block} out of range (the explainer has {len(layers)} blocks: "
                              f"0..{len(layers) - 2})")
        self.token_id, self.scale = token_id, scale
        self.vectors: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._handles = [model.get_input_embeddings().register_forward_pre_hook(self._capture),
                         layers[block].register_forward_hook(self._add)]

    def _capture(self, _module, args):
        ids = args[0] if args else None
        import torch

        self._mask = (ids == self.token_id) if isinstance(ids, torch.Tensor) else None

    def _add(self, _module, _args, output):
        if self.vectors is None or self._mask is None or not bool(self._mask.any()):
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        mask = self._mask
        if hidden.shape[:2] != mask.shape:
            raise RuntimeError(f"injection: hidden states {tuple(hidden.shape[:2])} do not match the input ids "
                               f"{tuple(mask.shape)}")
        v = self.vectors.to(hidden.device, hidden.dtype)
        v = v[None] if v.ndim == 1 else v
        if v.shape[0] not in (1, hidden.shape[0]):
            raise RuntimeError(f"injection: {v.shape[0]} vectors for a batch of {hidden.shape[0]} rows")
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        delta = self.scale * hidden.norm(dim=-1, keepdim=True) * unit[:, None, :] * mask[..., None].to(hidden.dtype)
        hidden = hidden + delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _NoInjection:
    """evidence=text: nothing is injected (training code may still set and clear `vectors`)."""

    vectors = None

    def remove(self) -> None:
        pass


class ExplainerLM:
    """The explainer model with its adapters merged and the injector attached."""

    def __init__(self, model, tokenizer, cfg: SAEExplainerConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.d_model = model.get_input_embeddings().weight.shape[1]
        self.placeholder_id: int | None = None
        self.injector: Injector | _NoInjection = _NoInjection()
        if cfg.evidence == "vector":  # text evidence needs no placeholder (any model family)
            ids = tokenizer.encode(cfg.placeholder, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"placeholder {cfg.placeholder!r} is {len(ids)} tokens for this tokenizer; "
                                  f"pick a single token (e.g. an unused special token)")
            self.placeholder_id = ids[0]
            self.injector = Injector(model, self.placeholder_id, cfg.block, cfg.scale)
        self._lock = threading.RLock()  # one generate() at a time: the injector's vectors are per call
        self._batcher = Batcher(self._generate_batch, key=_batch_key)
        self.batches = self._batcher.sizes  # prompts per batched agenerate call (tests)

    @classmethod
    def load(cls, cfg: SAEExplainerConfig, adapters: Sequence[Path] = ()) -> ExplainerLM:
        """The base model on `cfg.device` in `cfg.dtype`, with the adapters merged in order."""
        from saexplain.subject.model import check_device, load_model_and_tokenizer

        check_device(cfg.device, "--saex-device")
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.device)
        if adapters:
            from peft import PeftModel

            for path in adapters:
                model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        return cls(model.eval(), tokenizer, cfg)

    # ------------------------------------------------------------------------------------------- prompts
    def prompt(self, evidence: str | None = None) -> str:
        if self.cfg.evidence == "vector":
            text = template(__file__, "saeexplainer").completion(placeholder=self.cfg.placeholder)
            n = self.tokenizer(text)["input_ids"].count(self.placeholder_id)
            if n != 1:
                raise ConfigError(f"the explainer prompt holds the placeholder token {self.cfg.placeholder!r} {n} "
                                  f"times (it must be once: pick a token the prompt text does not produce)")
        else:
            if not evidence:
                raise ValueError("evidence=text needs the evidence text")
            text = template(__file__, "saeexplainer_text").completion(evidence=evidence)
        return text

    def check_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.d_model:
            raise ConfigError(f"decoder vectors of shape {tuple(vectors.shape)} do not fit the explainer "
                              f"(d_model {self.d_model}); evidence=vector needs an explainer of the subject's "
                              f"family (or use evidence=text)")
        return vectors.float()

    def generate(self, prompts: Sequence[str], vectors: torch.Tensor | None, n: int = 1,
                 temperature: float = 0.0, max_new_tokens: int = 32, seed: int = 0) -> list[list[str]]:
        """n explanations per prompt (row i of `vectors` goes with prompt i)."""
        import torch

        with self._lock, torch.inference_mode():
            return self._generate(prompts, vectors, n, temperature, max_new_tokens, seed)

    async def agenerate(self, prompt: str, vector: torch.Tensor | None, *, temperature: float = 0.0,
                        max_new_tokens: int = 32, seed: int = 0) -> str:
        """One explanation, for concurrent callers (a run's feature tasks): greedy requests issued together
        with the same length cap are generated as one batch, off the event loop; a sampled one runs alone
        (its seed reproduces it)."""
        return await self._batcher.submit((prompt, vector, temperature, max_new_tokens, seed))

    def _generate_batch(self, items: list[tuple]) -> list[str]:
        import torch

        _, vector, temperature, max_new_tokens, seed = items[0]
        vectors = None if vector is None else torch.stack([i[1].reshape(-1) for i in items])
        texts = self.generate([i[0] for i in items], vectors, 1, temperature, max_new_tokens, seed)
        return [t for (t,) in texts]

    def _generate(self, prompts, vectors, n, temperature, max_new_tokens, seed) -> list[list[str]]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        batch = tok(list(prompts), return_tensors="pt", padding=True).to(self.model.device)
        sample = temperature > 0
        copies = n if sample else 1  # greedy: one decode per prompt, repeated n times
        if vectors is not None:
            vectors = self.check_vectors(vectors)
            if vectors.shape[0] not in (1, len(prompts)):
                raise ValueError(f"{vectors.shape[0]} vectors for {len(prompts)} prompts")
            self.injector.vectors = vectors.repeat_interleave(copies, 0) if vectors.shape[0] > 1 else vectors
        torch.manual_seed(seed)
        try:
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                                      temperature=temperature if sample else None, top_p=None, top_k=None,
                                      num_return_sequences=copies, pad_token_id=tok.pad_token_id,
                                      no_repeat_ngram_size=self.cfg.no_repeat_ngram or None)
        finally:
            self.injector.vectors = None
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        texts = [clean(t) for t in texts]
        return [texts[i * copies:(i + 1) * copies] * (n // copies) for i in range(len(prompts))]


def _batch_key(item: tuple):
    """Greedy requests with the same length cap, all with or all without a vector, share a batch."""
    _, vector, temperature, max_new_tokens, _ = item
    return (max_new_tokens, vector is None) if temperature == 0 else alone()


def clean(text: str) -> str:
    """The explanation is the first line of the continuation."""
    return text.strip().split("\n")[0].strip()


_LOADED: OrderedDict[str, ExplainerLM] = OrderedDict()


def explainer_lm(cfg: SAEExplainerConfig) -> ExplainerLM:
    """The loaded explainer for a (resolved) config; the last one is kept in memory (a run explains feature by
    feature with several stages: reloading costs seconds, keeping three costs GBs)."""
    adapters = cfg.adapters()
    key = json.dumps([cfg.model, cfg.placeholder, cfg.block, cfg.scale, cfg.device, cfg.dtype, cfg.no_repeat_ngram,
                      [path_fingerprint(str(p)) for p in adapters]])
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = ExplainerLM.load(cfg, adapters)
    return _LOADED[key]


@EXPLAINERS.register("saeexplainer")
class SAEExplainer(Explainer):
    """`saeexplainer` (the configured stage) or `saeexplainer@sft|round1|round2|base` in a run's explainer list."""

    name = "saeexplainer"
    Config = SAEExplainerConfig

    prompts = ("saeexplainer", "saeexplainer_text")

    def __init__(self, cfg: SAEExplainerConfig | None = None):
        super().__init__(cfg)
        self.cfg.resolved().adapters()  # a missing training folder or stage is one error up front, not per feature

    def fingerprint(self) -> str:
        """Also the trained weights: a retrained stage explains again."""
        cfg = self.cfg.resolved()
        weights = [path_fingerprint(str(p)) for p in cfg.adapters()]
        return hashlib.sha256(f"{super().fingerprint()}:{cfg.to_json()}:{weights}".encode()).hexdigest()[:16]

    async def run(self, record: FeatureRecord, llm, oracle, trace: Tracer) -> Explanation:
        cfg = self.cfg.resolved()
        lm = explainer_lm(cfg)
        if cfg.evidence == "vector":
            vectors, evidence = oracle.decoder_direction(record.feature), None
        else:
            vectors, evidence = None, examples_evidence(record, cfg.examples, cfg.window)
        prompt = lm.prompt(evidence)
        trace("prompt", prompt)
        text = await lm.agenerate(prompt, vectors, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                  seed=record.feature)
        trace("reply", text)
        if not text:
            raise ValueError(f"the explainer model wrote an empty explanation for feature {record.feature}")
        return Explanation(text, [], {"stage": cfg.stage, "train_dir": cfg.train_dir, "evidence": cfg.evidence,
                                      "adapters": [str(p) for p in cfg.adapters()]})
