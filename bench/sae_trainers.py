"""sae-lens vs EleutherAI sparsify for training the default SAE: same model, hookpoint, width, k, token budget
and held-out activations. Needs `pip install -c constraints.txt eai-sparsify` (the `sparsify` extra).

    .venv/bin/python bench/sae_trainers.py [--tokens 204800]

Prints wall time and fraction of variance explained / L0 / dead fraction on the same held-out tokens;
last line: `fve_ratio: <sae-lens FVE ÷ sparsify FVE>`."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from saexplain.data.corpus import default_corpus, iter_documents
from saexplain.subject.model import SubjectModel, load_model_and_tokenizer
from saexplain.subject.sae import load_sae
from saexplain.subject.train_sae import TrainSAEConfig, collect_activations, sae_metrics, train_sae

CONTEXT = 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=204_800)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    model, tok = load_model_and_tokenizer("default")
    subject = SubjectModel(model, tok, "layers.6", name="default")
    docs = [d.text for d in iter_documents(default_corpus())]
    # held-out: the last documents (Shakespeare's tail); training uses the first documents (Grimm's tales first)
    eval_acts, _ = collect_activations(subject, iter(docs[-600:]), CONTEXT, 20_000)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = train_sae(TrainSAEConfig(tokens=args.tokens, max_corpus_tokens=args.tokens, d_sae=args.d_sae,
                                        k=args.k, out=str(Path(tmp) / "saelens")))
        results["sae-lens"] = {"seconds": time.perf_counter() - t, **sae_metrics(load_sae(str(path)), eval_acts)}

        from datasets import Dataset
        from sparsify import SaeConfig, TrainConfig, Trainer

        bos = [tok.bos_token_id]
        ctxs, buf = [], []
        for text in docs:
            buf += tok(text, add_special_tokens=False)["input_ids"]
            while len(buf) >= CONTEXT - 1 and len(ctxs) * (CONTEXT - 1) < args.tokens:
                ctxs.append(bos + buf[: CONTEXT - 1])
                buf = buf[CONTEXT - 1:]
            if len(ctxs) * (CONTEXT - 1) >= args.tokens:
                break
        ds = Dataset.from_dict({"input_ids": ctxs}).with_format("torch")
        cfg = TrainConfig(SaeConfig(num_latents=args.d_sae, k=args.k), batch_size=32, layers=[6],
                          save_dir=str(Path(tmp) / "sparsify"), run_name="run", log_to_wandb=False,
                          save_every=10**9, exclude_tokens=bos)
        t = time.perf_counter()
        Trainer(cfg, ds, model).fit()
        seconds = time.perf_counter() - t
        folder = next(p.parent for p in (Path(tmp) / "sparsify").rglob("sae.safetensors"))
        results["sparsify"] = {"seconds": seconds, "folder": folder.name,
                               **sae_metrics(load_sae(str(folder)), eval_acts)}
    for name, r in results.items():
        print(f"{name}: {r['seconds']:.0f}s  FVE {r['fraction_variance_explained']:.3f}  "
              f"L0 {r['mean_l0']:.1f}  dead {r['dead_fraction']:.3f}")
    print(json.dumps(results, indent=1, default=str))
    fve = {k: v["fraction_variance_explained"] for k, v in results.items()}
    print(f"fve_ratio: {fve['sae-lens'] / fve['sparsify']:.3f}")


if __name__ == "__main__":
    main()
