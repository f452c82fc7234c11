"""Planted features: an SAE (SAELens format, JumpReLU) whose latents are linear probes, fitted on the subject's
residual stream at the hookpoint, for concepts whose token labels a rule computes — so an explanation of a latent
can be checked against the truth without an LLM (`python -m bench planted`).

Two kinds of concept:
- lexical sets (colour words, family relations, …): a token fires when it is one of the set's words;
- context rules that a surface-token reading gets wrong: the word after a negation, the name after a title, the
  words inside quotes, the first word of a sentence. (The last word of a question, as the issue suggested, is not
  used: a causal model's residual stream at a word cannot see the "?" after it, so no probe can learn it.)

Each latent j: pre = x · w_j + b_j (the probe's logit on the raw residual x), fired when pre > t_j, where t_j is
the lowest logit threshold with precision ≥ `min_precision` on held-out contexts. Written as JumpReLU with
b_enc = b_j − t_j + margin and threshold = margin, so every activation is positive and ≥ margin; the decoder row
is the unit probe direction (what the logit lens and steering read)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


def _w(tok: str) -> str:
    return tok.strip().lower()


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str  # "lexical" | "context"
    description: str  # the true description, as a person would write it
    keywords: str  # regex (case-insensitive): an explanation that names the concept, not just one member
    label: Callable[[Sequence[str], int], bool]  # (a text's display tokens, position) → the rule says it fires
    members: frozenset[str] = frozenset()  # a lexical set's words


def lexical(name: str, words: set[str], description: str, keywords: str) -> Concept:
    return Concept(name, "lexical", description, keywords, lambda toks, i: _w(toks[i]) in words, frozenset(words))


def _after_negation(toks: Sequence[str], i: int) -> bool:
    return i > 0 and WORD.match(toks[i].strip() or "-") is not None and \
        _w(toks[i - 1]) in {"not", "never", "n't", "cannot", "nor"}


TITLES = {"mr", "mrs", "dr", "sir", "lady", "king", "queen", "lord", "prince", "princess", "master", "dame"}


def _after_title(toks: Sequence[str], i: int) -> bool:
    t = toks[i].strip()
    if not (t[:1].isupper() and WORD.match(t)):
        return False
    j = i - 1
    if j >= 0 and toks[j].strip() == ".":
        j -= 1
    return j >= 0 and _w(toks[j]) in TITLES


def _inside_quotes(toks: Sequence[str], i: int) -> bool:
    if not WORD.match(toks[i].strip() or "-"):
        return False
    depth = 0
    for t in toks[:i]:
        depth += t.count("“") - t.count("”")
    return depth > 0


def _sentence_start(toks: Sequence[str], i: int) -> bool:
    t = toks[i].strip()
    if not (t[:1].isupper() and WORD.match(t)) or i == 0:
        return False
    prev = toks[i - 1].strip()
    if prev == "." and i >= 2 and _w(toks[i - 2]) in TITLES:  # "Mr. Smith": an abbreviation, not a sentence end
        return False
    return prev[-1:] in (".", "!", "?") if prev else False


CONCEPTS: list[Concept] = [
    lexical("colours", {"red", "green", "blue", "yellow", "black", "white", "brown", "grey", "gray", "purple",
                        "pink", "scarlet", "crimson", "golden", "silver"},
            "colour words (red, green, white, golden …)", r"colou?rs?\b|\bhues?\b"),
    lexical("family", {"mother", "father", "brother", "sister", "son", "daughter", "wife", "husband", "uncle",
                       "aunt", "grandmother", "grandfather", "cousin", "parents", "brothers", "sisters", "sons",
                       "daughters", "children", "child"},
            "family relations (mother, brother, wife, son …)", r"famil|relative|kinship|relation"),
    lexical("numbers", {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                        "twenty", "thirty", "forty", "fifty", "hundred", "thousand"},
            "numbers written as words (two, seven, hundred …)", r"numb|numer|count|quantit|digit"),
    lexical("time_units", {"day", "days", "night", "nights", "year", "years", "morning", "evening", "week", "weeks",
                           "hour", "hours", "month", "months", "minute", "minutes"},
            "words for units or periods of time (day, night, year, hour …)", r"\btime|period|durat|temporal"),
    Concept("after_negation", "context", "the word right after a negation (not, never, n't)",
            r"negat|after (the word )?[\"']?(not|never|n't)|following (a |the )?(not|never|negat)", _after_negation),
    Concept("after_title", "context", "a name right after a title (Mr., King, Lady …)",
            r"title|honorific|after (the word )?[\"']?(mr|mrs|king|queen|lady|lord|sir|dr)\b", _after_title),
    Concept("inside_quotes", "context", "words inside quotation marks (quoted speech)",
            r"quot|dialog|speech|spoken", _inside_quotes),
    Concept("sentence_start", "context", "the first word of a sentence",
            r"(start|begin|first word|beginning)\w* (of )?(a |the )?(new )?sentence|sentence.?(start|initial|begin)",
            _sentence_start),
]


def concept_labels(concept: Concept, tokens: Sequence[str]) -> np.ndarray:
    return np.asarray([concept.label(tokens, i) for i in range(len(tokens))], bool)


def recovered(concept: Concept, explanation: str) -> bool:
    """Whether an explanation names the concept (its rule's keywords), judged without an LLM: naming one member
    of a set ("mother") does not count; naming the set ("family members") does."""
    return re.search(concept.keywords, explanation, re.IGNORECASE) is not None


def enumerates(concept: Concept, explanation: str, n: int = 3) -> bool:
    """Whether an explanation of a lexical set lists at least `n` different members of it ("son, father,
    brother"): not over-narrow, though it does not name the category."""
    words = set(re.findall(r"[a-z]+", explanation.lower()))
    return len(words & concept.members) >= n


# ------------------------------------------------------------------------------------------------ fitting
@dataclass
class Probe:
    concept: Concept
    w: np.ndarray  # [d_in], on the raw residual
    b: float
    threshold: float  # on the logit x·w + b
    precision: float  # held-out, at the threshold
    recall: float
    positives: int  # held-out positives


def fit_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, min_precision: float = 0.8, steps: int = 300,
              l2: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, float]:
    """Logistic regression (class-balanced, L2) on standardised features with torch's LBFGS; returns (w, b) for
    the raw features."""
    import torch

    torch.manual_seed(seed)
    xt = x[train]
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    X = torch.from_numpy(((xt - mu) / sd).astype(np.float32))
    Y = torch.from_numpy(y[train].astype(np.float32))
    pos = float(Y.sum())
    weight = torch.where(Y > 0, torch.tensor((len(Y) - pos) / max(pos, 1.0)), torch.tensor(1.0))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = X @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, weight=weight) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wn = w.detach().numpy() / sd
    return wn.astype(np.float32), float(b.detach().numpy()[0] - (wn * mu).sum())


def choose_threshold(logits: np.ndarray, y: np.ndarray, min_precision: float) -> float | None:
    """The lowest logit threshold whose precision is ≥ min_precision (the most recall at that precision)."""
    order = np.argsort(-logits)
    tp = np.cumsum(y[order])
    n = np.arange(1, len(order) + 1)
    prec = tp / n
    ok = np.flatnonzero((prec >= min_precision) & (tp >= 3))
    if not ok.size:
        return None
    k = ok.max()
    return float(logits[order[k]]) - 1e-6


def fit_planted(x: np.ndarray, tokens_per_ctx: list[list[str]], concepts: Sequence[Concept],
                min_precision: float = 0.8, seed: int = 0) -> list[Probe]:
    """Probes for `concepts` from residuals x [n_ctx × L, d] of contexts with display tokens `tokens_per_ctx`
    (BOS positions have the token '' and never fire). Contexts are split 60/20/20 into fit / threshold / held-out
    sets (by context, seeded); precision and recall are the held-out set's."""
    n_ctx, L = len(tokens_per_ctx), len(tokens_per_ctx[0])
    rng = np.random.default_rng(seed)
    part = rng.permutation(n_ctx)
    split = {"fit": part[: int(0.6 * n_ctx)], "tune": part[int(0.6 * n_ctx): int(0.8 * n_ctx)],
             "test": part[int(0.8 * n_ctx):]}
    mask = {k: np.zeros(n_ctx * L, bool) for k in split}
    for k, ctxs in split.items():
        for c in ctxs:
            mask[k][c * L:(c + 1) * L] = True
    text = np.asarray([bool(t) for toks in tokens_per_ctx for t in toks])
    probes = []
    for concept in concepts:
        y = np.concatenate([concept_labels(concept, toks) for toks in tokens_per_ctx]) & text
        if y[mask["fit"]].sum() < 10:
            continue
        w, b = fit_probe(x, y, mask["fit"] & text, min_precision, seed=seed)
        logits = x @ w + b
        t = choose_threshold(logits[mask["tune"] & text], y[mask["tune"] & text], min_precision)
        if t is None:
            continue
        held = mask["test"] & text
        fired = logits[held] > t
        tp = int((fired & y[held]).sum())
        probes.append(Probe(concept, w, b, t, tp / max(int(fired.sum()), 1), tp / max(int(y[held].sum()), 1),
                            int(y[held].sum())))
    return probes


def write_planted_sae(probes: Sequence[Probe], path: Path, hook_name: str, model_name: str,
                      prepend_bos: bool = True, margin: float = 1.0) -> Path:
    """The probes as a SAELens JumpReLU SAE folder (written by sae-lens itself), with planted.json beside it:
    each latent's concept, kind, true description, keywords and held-out precision / recall."""
    import torch
    from sae_lens import SAE

    d_in = int(probes[0].w.shape[0])
    sae = SAE.from_dict({"architecture": "jumprelu", "d_in": d_in, "d_sae": len(probes), "dtype": "float32",
                         "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
                         "metadata": {"hook_name": hook_name, "prepend_bos": prepend_bos, "model_name": model_name}})
    with torch.no_grad():
        for j, p in enumerate(probes):
            w = torch.from_numpy(p.w)
            sae.W_enc[:, j] = w
            sae.b_enc[j] = p.b - p.threshold + margin
            sae.threshold[j] = margin
            sae.W_dec[j] = w / w.norm()
        sae.b_dec.zero_()
    path.mkdir(parents=True, exist_ok=True)
    sae.save_model(path)
    (path / "planted.json").write_text(json.dumps([
        {"feature": j, "concept": p.concept.name, "kind": p.concept.kind, "description": p.concept.description,
         "keywords": p.concept.keywords, "precision": p.precision, "recall": p.recall,
         "held_out_positives": p.positives} for j, p in enumerate(probes)], indent=1) + "\n")
    return path


def collect_residuals(subject, documents: Sequence[str], length: int, max_contexts: int, batch: int = 16,
                      progress: bool = False) -> tuple[np.ndarray, list[list[str]]]:
    """Residuals at the subject's hookpoint for contexts of `length` tokens (BOS first when the subject prepends
    it): the first `length` tokens of each document long enough, up to `max_contexts`. Returns x
    [n_ctx × length, d] (float32) and each context's display tokens ('' at BOS, which never fires)."""
    import torch
    from tqdm.auto import tqdm

    bos = 1 if subject.prepend_bos else 0
    ctxs: list[tuple[list[int], list[str]]] = []
    for doc in documents:
        if len(ctxs) >= max_contexts:
            break
        doc = doc[: 6 * length]  # about enough characters for `length` tokens (shorter ones are skipped)
        ids, strings = subject.tokenize([doc])[0]
        if len(ids) >= length:
            ctxs.append((ids[:length], [""] * bos + strings[: length - bos]))
    if not ctxs:
        raise ValueError(f"no document has {length} tokens")
    out = []
    with tqdm(total=len(ctxs) * length, unit="tok", unit_scale=True, desc="residuals", disable=not progress) as bar:
        for i in range(0, len(ctxs), batch):
            ids = torch.tensor([c[0] for c in ctxs[i:i + batch]])
            h = subject.hidden(ids).float()
            out.append(h.reshape(-1, h.shape[-1]).cpu().numpy())
            bar.update(ids.numel())
    return np.concatenate(out), [c[1] for c in ctxs]
