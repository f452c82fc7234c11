"""The tiny *real* subject of the fast suite and of the throughput benchmarks: a randomly initialised 2-block
Gemma-3 (d_model 64) with a BPE tokenizer trained on the shipped corpus's Grimm's tales, SAEs written by sae-lens
itself, and the ground-truth SAE whose feature 0 fires on exactly one token, "▁wife"."""

from __future__ import annotations

from pathlib import Path

import torch

D_MODEL = 64
D_SAE = 96
GROUND_TRUTH_WORD = "wife"


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from saexplain.data.corpus import default_corpus

    text = Path(default_corpus()[0]).read_text(encoding="utf-8", errors="replace")[:200_000]  # Grimm's tales
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()$&%"))
    tok.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def write_tiny_model(path: Path) -> Path:
    """The tiny Gemma-3 and its tokenizer, saved in `path`."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        sliding_window=16, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # a random init with zero norms would make every block an identity-ish map
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_saelens_sae(arch: str, d_in: int = D_MODEL, hook: str = "blocks.0.hook_resid_post", **cfg_kw):
    """A sae-lens SAE of `arch` with random, non-trivial weights (biases and thresholds non-zero)."""
    from sae_lens import SAE

    cfg = {"architecture": arch, "d_in": d_in, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "metadata": {"hook_name": hook, "prepend_bos": True, "model_name": "tiny"}, **cfg_kw}
    if arch == "topk":
        cfg.setdefault("k", 8)
    sae = SAE.from_dict(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, D_SAE, generator=g) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(D_SAE, d_in, generator=g) * (0.5 + torch.rand(D_SAE, 1, generator=g)))
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.3)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
    return sae


def write_ground_truth_sae(model_dir: Path, path: Path) -> dict:
    """An SAE (SAELens format, ReLU) on the tiny model's embeddings (blocks.0.hook_resid_pre) whose feature 0
    fires on exactly one token id, "▁wife", and nowhere else: the explanation naming that token is right by
    construction. Feature 1 fires on "▁the"; the rest are random."""
    from saexplain.subject.model import SubjectModel, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(model_dir))
    subject = SubjectModel(model, tok, "blocks.0.hook_resid_pre", name=str(model_dir))
    vocab = len(tok)
    with torch.no_grad():
        emb = subject.hidden(torch.arange(vocab).view(1, -1))[0].float()  # [vocab, d]: position-independent
    sae = make_saelens_sae("standard", hook="blocks.0.hook_resid_pre")
    ids = {}
    with torch.no_grad():
        sae.b_dec.zero_()
        for j, word in enumerate((GROUND_TRUTH_WORD, "the")):
            (tid,) = tok.encode(" " + word, add_special_tokens=False)
            ids[word] = tid
            direction = emb[tid] / emb[tid].norm()
            proj = emb @ direction
            others = torch.cat([proj[:tid], proj[tid + 1:]]).max()
            if not proj[tid] > others + 1e-3:
                raise RuntimeError(f"the tiny model's embedding of {word!r} is not separable by one direction")
            sae.W_enc[:, j] = direction
            sae.b_enc[j] = -(proj[tid] + others) / 2
    sae.save_model(path)
    return {"sae": path, "model": model_dir, "feature": 0, "token_id": ids[GROUND_TRUTH_WORD],
            "word": GROUND_TRUTH_WORD, "the_feature": 1}
