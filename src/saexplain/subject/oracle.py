"""The activation oracle: texts → per-token activations of SAE features on the real subject model.

Every stage that needs activations (SAGE probes, scorers, SAEExplainer rewards, the cache) calls this."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from saexplain.batching import Batcher
from saexplain.devices import check_device
from saexplain.errors import ConfigError, SaexplainError
from saexplain.subject.config import SubjectConfig  # noqa: F401  (its home is a light module)
from saexplain.subject.hookpoints import Hookpoint
from saexplain.subject.model import SubjectModel, load_model_and_tokenizer
from saexplain.subject.sae import encoder_for, load_sae, sae_hook_name, sae_prepend_bos


@dataclass
class TextActivations:
    """Activations of one text. `tokens[i]` is the display string of token i (spaces kept, BOS excluded).

    With requested features: `acts[i, j]` is feature `features[j]` at token i and `indices` is None.
    Without: the sparse top-k per token, `acts[i, j]` the value of feature `indices[i, j]` (descending)."""

    text: str
    tokens: list[str]
    token_ids: list[int]
    acts: np.ndarray
    features: list[int] | None = None
    indices: np.ndarray | None = None

    def feature(self, feature: int) -> np.ndarray:
        """Per-token activation of one feature, [n_tokens]."""
        if self.features is not None:
            try:
                return self.acts[:, self.features.index(feature)]
            except ValueError:
                raise KeyError(f"feature {feature} was not requested (have {self.features})") from None
        return np.where(self.indices == feature, self.acts, 0.0).max(axis=1, initial=0.0)

    def max(self, feature: int) -> float:
        col = self.feature(feature)
        return float(col.max()) if col.size else 0.0


@dataclass
class LogitLens:
    feature: int
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]


class Oracle:
    def __init__(self, subject: SubjectModel, sae, batch_size: int = 32, top_k: int = 32,
                 max_batch_tokens: int = 8192):
        self.subject = subject
        self.sae = sae
        self.encoder = encoder_for(sae)
        self.batch_size = batch_size
        self.top_k = top_k
        self.max_batch_tokens = max_batch_tokens
        self.d_sae = int(sae.cfg.d_sae)
        validate_pair(subject, sae)
        # the oracle owns the model: every forward (batched activations, the cache, steering) holds this lock
        self._lock = threading.RLock()
        # top-k requests and chosen-feature requests batch apart (their outputs differ in kind)
        self._batcher = Batcher(self._serve, key=lambda item: item[1] is None)
        self.forwards = self._batcher.sizes  # requests per batched forward of aactivations (tests, benchmarks)

    @classmethod
    def from_config(cls, cfg: SubjectConfig) -> Oracle:
        check_device(cfg.device)
        sae = load_sae(cfg.sae, device=cfg.device)
        hook = cfg.hookpoint or sae_hook_name(sae)
        if hook is None:
            raise ConfigError(f"SAE {cfg.sae} does not say its hookpoint: pass --hookpoint (e.g. layers.6)")
        if cfg.hookpoint and sae_hook_name(sae):
            ours, theirs = Hookpoint.parse(cfg.hookpoint), Hookpoint.parse(sae_hook_name(sae))
            if not ours.same_stream(theirs):
                raise ConfigError(f"hookpoint {cfg.hookpoint} differs from the SAE's {sae_hook_name(sae)} "
                                  f"(SAE {cfg.sae})")
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.device)
        subject = SubjectModel(model, tokenizer, hook, name=cfg.model, prepend_bos=sae_prepend_bos(sae))
        return cls(subject, sae, batch_size=cfg.batch_size, top_k=cfg.top_k)

    # ------------------------------------------------------------------------------------------ main API
    def check_features(self, features: Sequence[int]) -> list[int]:
        out = []
        for f in features:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= int(f) < self.d_sae:
                raise SaexplainError(f"unknown feature id {f!r}: the SAE has {self.d_sae} features "
                                     f"(0..{self.d_sae - 1})")
            out.append(int(f))
        return out

    @contextmanager
    def exclusive(self):
        """Hold the model alone (steering changes every forward while its hook is on)."""
        with self._lock:
            yield self

    async def aactivations(self, texts: Sequence[str], features: Sequence[int] | None = None
                           ) -> list[TextActivations]:
        """`activations()` for concurrent callers: requests issued while a forward runs (or in the same tick)
        are served by one batched forward over the union of their texts and features, off the event loop; each
        caller gets its own texts and features, as it would alone."""
        if isinstance(texts, str):
            raise SaexplainError("activations() takes a list of texts, got one string")
        feats = None if features is None else self.check_features(features)  # a bad id fails its caller only
        return await self._batcher.submit((list(texts), feats))

    def _serve(self, items: list[tuple[list[str], list[int] | None]]) -> list:
        """One forward over the union of the items' texts and features, split back per item; when it fails
        (one item's bad text), each item alone, so that the others still get theirs."""
        texts = list(dict.fromkeys(t for r_texts, _ in items for t in r_texts))
        feats = None if items[0][1] is None else sorted({f for _, r_feats in items for f in r_feats})
        try:
            by_text = dict(zip(texts, self.activations(texts, feats)))
        except Exception:  # noqa: BLE001
            return [self._alone(r_texts, r_feats) for r_texts, r_feats in items]
        out = []
        for r_texts, r_feats in items:
            results = [by_text[t] for t in r_texts]
            if r_feats is not None and r_feats != feats:
                cols = [feats.index(f) for f in r_feats]
                results = [TextActivations(text=r.text, tokens=r.tokens, token_ids=r.token_ids,
                                           features=list(r_feats), acts=r.acts[:, cols], indices=None)
                           for r in results]
            out.append(results)
        return out

    def _alone(self, texts: list[str], features: list[int] | None):
        try:
            return self.activations(texts, features)
        except Exception as e:  # noqa: BLE001  handed to its caller
            return e

    @torch.inference_mode()
    def activations(self, texts: Sequence[str], features: Sequence[int] | None = None) -> list[TextActivations]:
        """Per text: token strings and per-token activations of `features` (or the sparse top-k of all)."""
        if isinstance(texts, str):
            raise SaexplainError("activations() takes a list of texts, got one string")
        with self._lock:
            return self._activations(texts, features)

    def _activations(self, texts: Sequence[str], features: Sequence[int] | None) -> list[TextActivations]:
        feats = None if features is None else self.check_features(features)
        ids_t = None if feats is None else torch.tensor(feats, dtype=torch.long, device=self.sae.W_enc.device)
        tokenized = self.subject.tokenize(texts)
        results: list[TextActivations | None] = [None] * len(texts)
        offset = 1 if self.subject.prepend_bos else 0
        for batch in self._batches([len(ids) for ids, _ in tokenized]):
            width = max(len(tokenized[i][0]) for i in batch)
            pad = self.subject.tokenizer.pad_token_id or 0
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = tokenized[i][0]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            hidden = self.subject.hidden(input_ids, mask)  # [B, T, d]
            keep = mask.bool().clone()
            keep[:, :offset] = False  # BOS is the model's, not the text's
            flat = hidden[keep.to(hidden.device)]  # [N, d] text tokens only, no padding
            if ids_t is not None:
                vals, idx = self.encoder.features(flat, ids_t), None
            else:
                vals, idx = self.encoder.topk(flat, self.top_k)
            vals = vals.float().cpu().numpy()
            idx = None if idx is None else idx.cpu().numpy().astype(np.int32)
            start = 0
            for i in batch:
                ids, strings = tokenized[i]
                n = len(ids) - offset
                results[i] = TextActivations(
                    text=texts[i], tokens=strings, token_ids=ids[offset:], features=feats,
                    acts=vals[start:start + n], indices=None if idx is None else idx[start:start + n])
                start += n
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def codes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Sparse codes of pre-tokenised input [B, T] (BOS included by the caller): CSR over the B×T tokens,
        (counts [B*T], indices [nnz], values [nnz]); BOS and padding positions have no entries."""
        with self._lock:
            hidden = self.subject.hidden(input_ids, attention_mask)
        keep = torch.ones(input_ids.shape, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        keep = keep & (input_ids != self.subject.tokenizer.bos_token_id) if self.subject.prepend_bos else keep
        counts = torch.zeros(input_ids.numel(), dtype=torch.long)
        flat_keep = keep.reshape(-1)
        c, idx, val = self.encoder.nonzeros(hidden.reshape(-1, hidden.shape[-1])[flat_keep.to(hidden.device)])
        counts[flat_keep] = c.cpu()
        return counts, idx.cpu(), val.float().cpu()

    def max_activation(self, texts: Sequence[str], feature: int) -> list[float]:
        return [r.max(feature) for r in self.activations(texts, [feature])]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Length-sorted batches (little padding), bounded in texts and in padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches, cur = [], []
        for i in order:
            if cur and (len(cur) >= self.batch_size or lengths[i] * (len(cur) + 1) > self.max_batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    # -------------------------------------------------------------------------------------- output side
    def decoder_direction(self, feature: int) -> torch.Tensor:
        (f,) = self.check_features([feature])
        return self.sae.W_dec[f].detach().clone()

    @torch.inference_mode()
    def logit_lens(self, feature: int, k: int = 10) -> LogitLens:
        """Decoder row through the final norm and the unembedding → the tokens it promotes / suppresses."""
        direction = self.decoder_direction(feature).to(self.subject.device, self.subject.dtype)
        normed = self.subject.final_norm()(direction.view(1, 1, -1)).view(-1)
        logits = (self.subject.unembedding() @ normed).float()
        top, bottom = logits.topk(k), (-logits).topk(k)
        tok = self.subject.tokenizer
        return LogitLens(
            feature=feature,
            top=[(tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)],
            bottom=[(tok.decode([int(i)]), float(-v)) for v, i in zip(bottom.values, bottom.indices)],
        )


    READOUT_PROMPTS = ("The", "I think that", "Here is a short story:", "In the news today,")

    def steering_readout(self, feature: int, k: int = 8, target_kl: float = 0.5) -> list[tuple[str, float]]:
        """Tokens whose next-token probability rises most when the feature's decoder direction (unit norm) is
        added at the hookpoint with the strength that moves the distribution by `target_kl` (mean over a few
        neutral prompts): what the feature does to the output, as tokens. Holds the model alone."""
        from saexplain.subject.steering import readout

        direction = self.decoder_direction(feature).float()
        direction = direction / direction.norm()
        with self.exclusive():
            tokens, _ = readout(self.subject, self.READOUT_PROMPTS, direction, k, target_kl)
        return tokens


def validate_pair(subject: SubjectModel, sae) -> None:
    """The SAE must read the stream the model produces: one clear line when it cannot."""
    d_in = int(sae.cfg.d_in)
    if d_in != subject.d_model:
        raise ConfigError(f"SAE d_in {d_in} does not match {subject.name}'s d_model {subject.d_model} "
                          f"(hookpoint {subject.hookpoint.saelens_name})")
    if sae.cfg.reshape_activations != "none":
        raise ConfigError(f"SAE reads {sae_hook_name(sae)} (reshape {sae.cfg.reshape_activations}); only "
                          "residual-stream SAEs are supported")
    if not sae.W_enc.dtype.is_floating_point:
        raise ConfigError(f"SAE weights have dtype {sae.W_enc.dtype}; expected a floating-point dtype")
