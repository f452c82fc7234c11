"""`saexplain train sft|pairs|dpo --round 1|2`: SAEExplainer's training loop on a training folder.

    <dir>/config.json      every config of the first command (later commands must agree with it)
    <dir>/explainer.json   the explainer settings (read back by the `saeexplainer` explainer at evaluation)
    <dir>/split.json       training features and the held-out ones they exclude
    <dir>/sft/             data (HF dataset), log.jsonl, checkpoint.pt, adapter/
    <dir>/round{1,2}/      candidates.jsonl (per feature, resumable), pairs/ (HF dataset), pairs.json,
                           dpo/ (TRL checkpoints), adapter/

The policy of each stage is the base model with the earlier adapters merged (round 1 starts from SFT, round 2
from SFT + round 1), which is also the reference of its DPO round."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from saexplain.errors import ConfigError, SaexplainError
from saexplain.explain.oneshot import examples_evidence
from saexplain.explain.saeexplainer import STAGES, ExplainerLM
from saexplain.pipeline.runner import StageConfigs, load_records
from saexplain.store import Store
from saexplain.subject.oracle import Oracle
from saexplain.train.config import TrainConfig
from saexplain.train.data import (
    EMPTY,
    Candidate,
    build_pairs,
    check_features,
    choose_train_features,
    corpus_reward,
    failed,
    feature_order,
    generation_reward,
    heldout_features,
    load_jsonl,
    max_by_text,
    pair_features,
    references_from_neuronpedia,
    references_from_store,
    references_from_top_tokens,
    remeasure,
    reward,
    reward_noise,
    rewards_summary,
    round_pool,
    save_pairs,
    unseen_features,
    with_greedy,
)
from saexplain.train.dpo import pair_margins, train_dpo
from saexplain.train.sft import train_sft

# options that may differ between the commands of one training folder: the configs' declared speed settings,
# and where SFT's references come from (read by `sft` only; what it trained on is kept in sft/data)
_FREE = {"training.save_steps", "training.references", "training.reference_run", "training.reference_scorer",
         "training.train_device"} | {
    f"{section}.{name}" for section, cls in StageConfigs.CLASSES.items() for name in cls.speed_fields}
# training settings that do not change a feature's SFT model or round-1 candidates (`Training.reuse`): those read only
# once the candidates are rewarded (the pair rules, DPO), and how many features get candidates — each feature's are
# seeded by the feature alone, and a larger `pair_features` draw extends a smaller one (one seeded permutation)
_REUSABLE = {f"training.{k}" for k in (
    "pairs_per_feature", "min_gap_sigmas", "min_reward", "min_spread", "min_margin", "dpo_preset", "dpo_holdout",
    "dpo_patience", "dpo_check", "dpo_check_features", "dpo_epochs", "dpo_batch", "beta1", "lr1", "beta2", "lr2",
    "pair_features", "greedy_rounds")}
# settings only round 2 reads: a folder that differs from another in these alone has the same round 1 (`reuse`)
_ROUND2_ONLY = {"training.beta2", "training.lr2", "training.greedy_rounds"}
# settings that change a round's candidates or rewards but not the SFT model: `Training.reuse` copies only SFT
_CANDIDATE_SETTINGS = {f"training.{k}" for k in (
    "candidates", "candidate_temperature", "reward_source", "reward_fraction", "reward_texts", "reward_repeats",
    "dpo_features")}
# the LLM-text rewards: the same texts (same prompt, seeds), measured two ways (`data.set_reward`)
_MEASURES = {"llm": "max", "share": "share"}
# the stage configs a training depends on (the others — scorers, other explainers — are not its business)
_SECTIONS = ("subject", "corpus", "cache", "sampling", "llm")


def _logged(echo: Callable[[str], None], log: Path) -> Callable[[str], None]:
    """`echo`, and each message appended to the folder's log with its UTC time: a training's record of what each
    invocation did survives the terminal it ran in (runs last hours and resume across sessions)."""
    def both(message: str) -> None:
        echo(message)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {message}\n")
    return both


class Training:
    """One training folder with its configs, store, oracle, records and explainer settings."""

    def __init__(self, cfg: TrainConfig, stages: StageConfigs, echo: Callable[[str], None] = print):
        self.cfg, self.stages = cfg, stages
        self.dir = cfg.folder()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo = _logged(echo, self.dir / "train.log")
        self.explainer = stages.saeexplainer.model_copy(update={"train_dir": None, "stage": "base"})
        config = self._check_config()
        self.store = Store(cfg.store or stages.run.store or _default_store())
        self.oracle = Oracle.from_config(stages.subject)
        split = self.dir / "split.json"
        saved = json.loads(split.read_text()) if split.is_file() else {}
        if "unseen" not in saved:  # a new split, or one from before splits listed the unseen features (added once)
            cache, _ = load_records(stages, self.store, self.oracle, [], echo)
            stats = self.store.feature_stats(cache.run_id)
            if not saved:
                heldout = heldout_features(self.store, cfg)
                train = choose_train_features(cfg, stats, heldout)
                if not train:
                    raise SaexplainError(f"no training feature: --features {cfg.features} chose none")
                saved = {"train": train, "heldout": sorted(heldout)}
            saved["unseen"] = unseen_features(cfg, stats, set(saved["heldout"]), saved["train"])
            split.write_text(json.dumps(saved))
        self.features, self.heldout = saved["train"], set(saved["heldout"])
        # the DPO rounds' pool: the training features, or the unseen ones (then their records are loaded too)
        self.pool = round_pool(saved, cfg)
        extra = [] if cfg.dpo_features == "sft" else sorted(set(self.pair_features()) | set(
            self.check_features() if cfg.dpo_check == "reward" else []))
        self.records = load_records(stages, self.store, self.oracle, self.features + extra, echo)[1]
        if not (self.dir / "config.json").is_file():  # written once the split is valid
            (self.dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            self.explainer.save(self.dir / "explainer.json")
        echo(f"training folder {self.dir}: {len(self.features)} training features, "
             f"{len(self.heldout)} held out" + (f", the rounds on {len(extra)} unseen features" if extra else ""))

    def _check_config(self) -> dict:
        """This command's configs; an error when they differ from the folder's (but for speed settings)."""
        stages = self.stages.to_dict()
        now = {"training": json.loads(self.cfg.to_json()), **{k: stages[k] for k in _SECTIONS},
               "saeexplainer": json.loads(self.explainer.to_json())}
        path = self.dir / "config.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            unread = _unread(saved.get("training", {})) & _unread(now["training"])
            key, was, v = _first_difference(saved, now, _FREE | {f"training.{k}" for k in unread})
            if key:
                raise ConfigError(f"{self.dir} was started with {key}={was!r}, not {v!r} "
                                  f"(use another --dir for other settings)")
        return now

    def reuse(self, src: str | Path) -> list[str]:
        """Copies folder `src`'s SFT model and round-1 candidates into this folder where it has none, so a
        folder that differs only in its pair rules, DPO settings or number of pair features does not pay again
        for what it would compute identically (the round-1 candidates cost an LLM call per reward; with more pair
        features, only the new ones' are computed). `src` must hold the same split and agree on every other
        setting but the candidates' (`_CANDIDATE_SETTINGS`: where those differ, only the SFT model is copied —
        unless only the measure of the LLM's reward texts differs, 'llm' ↔ 'share' or `reward_fraction`: then the
        candidates are copied with their stored texts measured again by the oracle, no LLM call, the rewards a
        fresh round would compute from the same texts). Returns what was copied."""
        src = Path(src).expanduser()
        try:
            saved = json.loads((src / "config.json").read_text())
            split = json.loads((src / "split.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--reuse {src}: not a training folder ({e})") from None
        now = self._check_config()
        key, was, v = _first_difference(saved, now, _FREE | _REUSABLE | _CANDIDATE_SETTINGS | {"training.dir"})
        if key:
            raise ConfigError(f"--reuse {src}: it was trained with {key}={was!r}, this folder has {v!r}")
        # the other settings agree: the candidates differ only where the candidate settings do
        differ = _candidates_differ(saved.get("training", {}), now["training"])
        if split.get("train") != self.features:
            raise ConfigError(f"--reuse {src}: its training features ({src / 'split.json'}) are not this folder's")
        copied = []
        if not (self.dir / "sft" / "adapter" / "adapter_config.json").is_file():
            if not (src / "sft" / "adapter" / "adapter_config.json").is_file():
                raise ConfigError(f"--reuse {src}: it has no trained SFT adapter")
            shutil.rmtree(self.dir / "sft", ignore_errors=True)  # an unfinished SFT of this folder
            shutil.copytree(src / "sft", self.dir / "sft")
            copied.append("sft")
        # round 1's candidates were written by the SFT model: only copied beside the SFT model they came from, and
        # never over this folder's own (a folder restored from a snapshot without its SFT model, e.g. one with more
        # pair features than `src`: its candidates came from the same SFT model, and are more)
        cand = self.dir / "round1" / "candidates.jsonl"
        if copied and differ != "other" and (src / "round1" / "candidates.jsonl").is_file() and not cand.is_file():
            cand.parent.mkdir(exist_ok=True)
            if differ == "measure":  # the same texts under another measure: copied, re-measured
                self._remeasure(src / "round1" / "candidates.jsonl", cand)
                copied.append(f"round1/candidates.jsonl (rewards re-measured: {self.cfg.reward_source})")
            else:
                shutil.copyfile(src / "round1" / "candidates.jsonl", cand)
                copied.append("round1/candidates.jsonl")
        # round 1 trained as this folder would train it (every setting round 1 reads agrees): its record — pairs,
        # adapter, logs — and round 2's candidates, which the round-1 model wrote, for another round 2
        r1, r2 = src / "round1", self.dir / "round2" / "candidates.jsonl"
        src_cfg = TrainConfig(**{k: v for k, v in saved.get("training", {}).items() if k in TrainConfig.model_fields})
        same_r1 = (_first_difference(saved, now, _FREE | _ROUND2_ONLY | {"training.dir"})[0] is None
                   and src_cfg.greedy_in(1) == self.cfg.greedy_in(1))
        if ("sft" in copied and same_r1 and (r1 / "adapter" / "adapter_config.json").is_file()
                and not (self.dir / "round1" / "adapter").exists()):
            shutil.rmtree(self.dir / "round1", ignore_errors=True)
            shutil.copytree(r1, self.dir / "round1", ignore=shutil.ignore_patterns("checkpoint-*"))
            copied = ["sft", "round1"]
            if (src / "round2" / "candidates.jsonl").is_file() and not r2.is_file():  # never replaces its own
                r2.parent.mkdir(exist_ok=True)
                shutil.copyfile(src / "round2" / "candidates.jsonl", r2)
                copied.append("round2/candidates.jsonl")
        self.echo(f"reused from {src}: {', '.join(copied) or 'nothing (this folder has its own SFT model)'}")
        return copied

    def _remeasure(self, src: Path, dst: Path) -> None:
        """`src`'s candidates (each feature's last line), their stored reward texts measured again by the oracle
        under this folder's reward, written to `dst` (through a temporary file: a killed copy leaves none)."""
        tmp = dst.with_suffix(".tmp")
        t0 = time.perf_counter()
        with open(tmp, "w") as fh:
            for f, row in load_jsonl(src).items():
                rows = [Candidate(**c) for c in row["candidates"]]
                acts = max_by_text(self.oracle, [x for c in rows if c.reward is not None for x in c.texts], f)
                cands = [remeasure(c, acts, row["max_act"], self.cfg.reward_texts, self.cfg.reward_repeats,
                                   _MEASURES[self.cfg.reward_source], self.cfg.reward_fraction) for c in rows]
                fh.write(json.dumps({**row, "candidates": [asdict(c) for c in cands]}) + "\n")
        tmp.replace(dst)
        self.echo(f"round 1 candidates of {src.parent.parent}: rewards re-measured as '{self.cfg.reward_source}' "
                  f"({time.perf_counter() - t0:.0f}s, no LLM call)")

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------- pieces
    def policy(self, stage: str) -> ExplainerLM:
        """The explainer model of `stage` (base, sft, round1, round2), adapters merged."""
        cfg = self.explainer.model_copy(update={"train_dir": str(self.dir), "stage": stage,
                                                "device": self.cfg.train_device, "dtype": self.cfg.train_dtype})
        return ExplainerLM.load(cfg, cfg.adapters())

    def vectors(self) -> dict[int, torch.Tensor] | None:
        """The decoder vectors of the features the explainer trains or is checked on."""
        if self.explainer.evidence != "vector":
            return None
        return {f: self.oracle.decoder_direction(f).float() for f in self.records}

    def prompt(self, lm: ExplainerLM, feature: int) -> str:
        if self.explainer.evidence == "vector":
            return lm.prompt()
        return lm.prompt(examples_evidence(self.records[feature], self.explainer.examples, self.explainer.window))

    # --------------------------------------------------------------------------------------- SFT
    def references(self) -> dict[int, str]:
        if self.cfg.references == "store":
            if self.cfg.reference_run is None:
                raise ConfigError("--references store needs --reference-run (a run that explained the training "
                                  "features), or pass a Neuronpedia export with --references FILE")
            refs = references_from_store(self.store, self.cfg.reference_run, self.features,
                                         self.cfg.reference_scorer)
        elif self.cfg.references == "top-tokens":
            refs = references_from_top_tokens({f: self.records[f] for f in self.features})
        else:
            refs = references_from_neuronpedia(self.cfg.references, self.features)
        missing = [f for f in self.features if f not in refs]
        if len(missing) == len(self.features):
            raise SaexplainError("no reference explanation for any training feature")
        if missing:
            self.echo(f"sft: {len(missing)} training features have no reference explanation and are skipped")
        return refs

    def sft(self) -> Path:
        from datasets import Dataset

        out = self.dir / "sft"
        if (out / "adapter" / "adapter_config.json").is_file():
            self.echo(f"sft: already trained ({out / 'adapter'})")
            return out / "adapter"
        refs = self.references()
        lm = self.policy("base")
        rows = [{"feature": f, "prompt": self.prompt(lm, f), "completion": " " + refs[f]}
                for f in self.features if f in refs]
        Dataset.from_list(rows).save_to_disk(str(out / "data"))
        t0 = time.perf_counter()
        adapter = train_sft(lm, rows, self.vectors(), self.cfg, out,
                            on_step=lambda s, n, loss: self.echo(f"sft step {s}/{n}: loss {loss:.3f}"))
        self.echo(f"sft: {len(rows)} references, adapter {adapter} ({time.perf_counter() - t0:.0f}s)")
        return adapter

    # ------------------------------------------------------------------------------------- pairs
    def pair_features(self) -> list[int]:
        """The features that get candidates and pairs: all training features, or `pair_features` of them
        (seeded) — SFT may warm up on thousands of features while the rounds, which cost LLM calls, use fewer —,
        or with `dpo_features` 'unseen' `pair_features` of the band's features outside the split."""
        return pair_features(self.pool, self.cfg)

    def pairs(self, round_: int, llm) -> Path:
        """Candidates, rewards and pairs of a round (resumable per feature); closes `llm` when done."""
        out = self.dir / f"round{round_}"
        if (out / "adapter" / "adapter_config.json").is_file() and (out / "pairs").is_dir():
            # DPO of this round trained on these pairs: they are its record (the web page shows them as what it
            # trained on), so a resumed command neither retries a failed reward nor rebuilds them
            asyncio.run(llm.aclose())
            self.echo(f"pairs round {round_}: DPO round {round_} trained on {out / 'pairs'}: kept as they are "
                      f"(failed rewards not retried)")
            return out / "pairs"
        out.mkdir(parents=True, exist_ok=True)
        feats = self.pair_features()
        lm = self.policy(STAGES[round_])  # round 1: the SFT model; round 2: SFT + round 1
        vectors = self.vectors()
        path = out / "candidates.jsonl"
        done = load_jsonl(path)
        # a feature is done when every candidate has a reward (empty candidates stay empty: not retried)
        # in the draw's order: a round stopped part-way has the first features of the draw done, which a folder
        # with fewer --pair-features (reusing these candidates) can use as they are
        order = {f: i for i, f in enumerate(feature_order(self.pool, self.cfg))}
        greedy = self.cfg.greedy_in(round_)

        def due(f: int) -> bool:
            return f not in done or (greedy and not done[f].get("greedy")) or any(map(failed, with_greedy(done[f])))
        todo = sorted((f for f in feats if due(f)), key=order.get)

        async def go():
            with open(path, "a") as fh:
                for i, f in enumerate(todo):
                    t_f = time.perf_counter()
                    by_text: dict[str, Candidate] = {}
                    g_text = None
                    if f in done:  # a retry: the same candidates, only the failed rewards are asked again
                        texts = [c["text"] for c in done[f]["candidates"]]
                        by_text = {c["text"]: Candidate(**c) for c in with_greedy(done[f]) if not failed(c)}
                        g_text = (done[f].get("greedy") or {}).get("text")
                    else:
                        texts = lm.generate([self.prompt(lm, f)], vectors[f] if vectors else None,
                                            n=self.cfg.candidates, temperature=self.cfg.candidate_temperature,
                                            max_new_tokens=self.explainer.max_new_tokens,
                                            seed=self.cfg.train_seed + 1000 * round_ + f)[0]
                    if greedy and g_text is None:  # the text the evaluation would read: the policy's greedy one
                        g_text = lm.generate([self.prompt(lm, f)], vectors[f] if vectors else None, n=1,
                                             temperature=0.0, max_new_tokens=self.explainer.max_new_tokens)[0][0]
                    # each distinct candidate is rewarded once, all of them in flight together (the LLM client
                    # bounds them by its max_concurrency); a failure is recorded and retried by the next run
                    new = [t for t in dict.fromkeys([*texts, *([g_text] if greedy else [])]) if t not in by_text]
                    by_text |= zip(new, await asyncio.gather(*(self._reward(f, t, llm, self.cfg.reward_repeats)
                                                               for t in new)))
                    cands = [asdict(by_text[t]) for t in texts]
                    line = {"feature": f, "max_act": self.records[f].max_act, "candidates": cands,
                            **({"greedy": asdict(by_text[g_text])} if greedy else {}),
                            # generation + rewards of this feature, over its attempts (a retry adds its time)
                            "seconds": done.get(f, {}).get("seconds", 0.0) + time.perf_counter() - t_f}
                    fh.write(json.dumps(line) + "\n")
                    fh.flush()
                    done[f] = line
                    best = max((c["reward"] for c in cands if c["reward"] is not None), default=None)
                    self.echo(f"round {round_} feature {f} ({i + 1}/{len(todo)}): {len(by_text)} distinct "
                              f"candidates, best reward {best if best is None else round(best, 3)}")
            await llm.aclose()

        asyncio.run(go())
        pairs, dropped = [], {}
        noise = reward_noise([Candidate(**c) for f in feats for c in done[f]["candidates"]])
        for f in feats:
            cands = [Candidate(**c) for c in done[f]["candidates"]]
            g = done[f].get("greedy") if greedy else None
            got, why = build_pairs(f, cands, self.cfg, noise, Candidate(**g) if g else None)
            pairs += got
            if not got:
                dropped[f] = why
        prompts = {p.feature: self.prompt(lm, p.feature) for p in pairs}
        summary = rewards_summary([done[f] for f in feats], pairs, greedy)
        # seconds over every invocation (a resumed round adds its features to the earlier ones'); lines written
        # before candidates.jsonl kept their time are counted in `features_timed`, not guessed
        timed = [done[f]["seconds"] for f in feats if "seconds" in done[f]]
        (out / "pairs.json").write_text(json.dumps({"pairs": len(pairs), "reward_source": self.cfg.reward_source,
                                                   "dropped": dropped, "failed": summary["failed"],
                                                   "features_with_pairs": len(feats) - len(dropped),
                                                   "reward_noise": noise,
                                                   "rewards": summary, "seconds": float(sum(timed)),
                                                   "features_timed": len(timed)}, indent=1))
        save_pairs(pairs, prompts, out / "pairs")
        self.echo(f"round {round_}: {len(pairs)} pairs from {len(feats) - len(dropped)} of {len(feats)} features "
                  f"({len(dropped)} dropped, {summary['failed']} failed rewards"
                  + (f", {summary['greedy']['failed']} of them greedy texts" if greedy else "")
                  + f") → {out / 'pairs'}")
        return out / "pairs"

    async def _reward(self, feature: int, text: str, llm, repeats: int) -> Candidate:
        """One candidate rewarded by `reward_source` (the corpus reward needs no `llm`): an empty candidate, or a
        reward that failed, is a Candidate with its error."""
        if not text:
            return Candidate(text, error=EMPTY)
        rec = self.records[feature]
        try:
            if self.cfg.reward_source == "corpus":
                return corpus_reward(text, rec, self.cfg.reward_fraction)
            if self.cfg.reward_source == "generation":
                return await generation_reward(text, rec, llm, self.oracle, self.cfg.reward_texts, repeats,
                                               self.cfg.reward_fraction)
            return await reward(text, feature, rec.max_act, llm, self.oracle, self.cfg.reward_texts, repeats,
                                _MEASURES[self.cfg.reward_source], self.cfg.reward_fraction)
        except Exception as e:  # noqa: BLE001  a row with its reason
            return Candidate(text, error=f"{type(e).__name__}: {e}")

    # --------------------------------------------------------------------------------------- DPO
    def check_features(self) -> list[int]:
        """The features of DPO's reward check: features of the rounds' pool no round trains on
        (`data.check_features`)."""
        return check_features(self.pool, self.cfg)

    def reward_check(self, llm: Callable[[], object] | None,
                     vectors: dict[int, torch.Tensor] | None) -> Callable[[ExplainerLM], dict]:
        """DPO's reward check (`dpo_check` 'reward'): the model's greedy explanation of each check feature — what
        the evaluation would write —, rewarded as the round's candidates are (`reward_source`) but on one greedy
        set of texts; the value is their mean over the features rewarded. `llm` makes the LLM client of one
        check (the corpus reward needs none); a failed reward is a row with its reason, left out of the mean."""
        feats = self.check_features()
        if self.cfg.reward_source != "corpus" and llm is None:
            raise ConfigError(f"--dpo-check reward with --reward-source {self.cfg.reward_source} needs the LLM "
                              f"that writes the reward texts")

        async def rewards(texts: list[str]) -> list[dict]:
            client = llm() if self.cfg.reward_source != "corpus" else None
            try:
                got = await asyncio.gather(*(self._reward(f, t, client, 1) for f, t in zip(feats, texts)))
            finally:
                if client is not None:
                    await client.aclose()
            return [{"feature": f, "text": c.text, "reward": c.reward, "error": c.error} for f, c in zip(feats, got)]

        def check(lm: ExplainerLM) -> dict:
            t0 = time.perf_counter()
            vecs = torch.stack([vectors[f] for f in feats]) if vectors else None
            texts = [x[0] for x in lm.generate([self.prompt(lm, f) for f in feats], vecs, n=1, temperature=0.0,
                                               max_new_tokens=self.explainer.max_new_tokens)]
            rows = asyncio.run(rewards(texts))
            ok = [r["reward"] for r in rows if r["reward"] is not None]
            if not ok:
                raise SaexplainError(f"DPO reward check: no check feature's explanation was rewarded "
                                     f"(feature {rows[0]['feature']}: {rows[0]['error']})")
            res = {"value": float(np.mean(ok)), "rewarded": len(ok), "features": rows,
                   "seconds": round(time.perf_counter() - t0, 1)}
            self.echo(f"dpo reward check: mean reward {res['value']:.3f} over {len(ok)} of {len(feats)} features "
                      f"({res['seconds']:.0f}s)")
            return res

        return check

    def dpo(self, round_: int, llm: Callable[[], object] | None = None, **overrides) -> Path:
        """DPO round `round_` on its pairs. `llm` (a zero-argument factory of the LLM client) is needed by the
        reward check (`dpo_check` 'reward') with an LLM reward."""
        from datasets import load_from_disk

        out = self.dir / f"round{round_}"
        if (out / "adapter" / "adapter_config.json").is_file():
            self.echo(f"dpo round {round_}: already trained ({out / 'adapter'})")
            if not (out / "margins.json").is_file():
                self.margins(round_)
            return out / "adapter"
        if not (out / "pairs").is_dir():
            raise SaexplainError(f"no pairs for round {round_}: run `saexplain train pairs --round {round_}` first")
        pairs = load_from_disk(str(out / "pairs"))
        lm = self.policy(STAGES[round_])
        t0 = time.perf_counter()
        vectors = self.vectors()
        check = self.reward_check(llm, vectors) if self.cfg.dpo_check == "reward" else None
        adapter = train_dpo(lm, pairs, vectors, self.cfg, round_, out, check=check, **overrides)
        self.echo(f"dpo round {round_}: {len(pairs)} pairs, adapter {adapter} ({time.perf_counter() - t0:.0f}s)")
        if (out / "early_stop.json").is_file():
            es = json.loads((out / "early_stop.json").read_text())
            key = es.get("check", "heldout_margin")
            what = (f"{len(es['epochs'][0]['features'])} check features' mean reward" if key == "check_reward"
                    else f"{es['heldout_pairs']} held-out pairs' margin")
            self.echo(f"dpo round {round_}: {what} by epoch "
                      + ", ".join(f"{e['epoch']}: {e[key]:+.3f}" for e in es["epochs"])
                      + f" → kept epoch {es['best_epoch']}")
        del lm
        self.margins(round_)
        return adapter

    def margins(self, round_: int) -> dict:
        """log p(chosen) − log p(rejected) on the round's pairs before (the previous stage) and after the round;
        written to round<N>/margins.json."""
        from datasets import load_from_disk

        out = self.dir / f"round{round_}"
        rows = list(load_from_disk(str(out / "pairs")))
        vectors = self.vectors()
        m = {k: pair_margins(self.policy(STAGES[round_ + i]), rows, vectors, self.cfg.max_length)
             for i, k in enumerate(("before", "after"))}
        res = {"pairs": len(rows), "mean_before": float(np.mean(m["before"])),
               "mean_after": float(np.mean(m["after"])),
               "improved": sum(a > b for a, b in zip(m["after"], m["before"])), **m}
        (out / "margins.json").write_text(json.dumps(res, indent=1))
        self.echo(f"dpo round {round_}: mean log p(chosen) − log p(rejected) on its {len(rows)} pairs "
                  f"{res['mean_before']:+.3f} → {res['mean_after']:+.3f} ({res['improved']} pairs raised)")
        return res


def _first_difference(saved: dict, now: dict, free: set[str]) -> tuple[str | None, object, object]:
    """The first setting (section.name, saved value, this value) where `now` differs from a saved config, but for
    those in `free`; a training setting the saved config lacks (added since) takes its default, which is what that
    folder ran with; another section's missing setting is taken as agreeing."""
    defaults = {"training": json.loads(TrainConfig().to_json())}
    for section, values in now.items():
        for k, v in values.items():
            key = f"{section}.{k}"
            was = saved.get(section, {}).get(k, defaults.get(section, {}).get(k, v))
            if key not in free and was != v:
                return key, was, v
    return None, None, None


def _unread(training: dict) -> set[str]:
    """The training settings a config does not read, given its other settings: a value that differs there
    changes nothing ('llm' takes the max, not a share of it; the margin check has no check features)."""
    defaults = json.loads(TrainConfig().to_json())
    out = set()
    if training.get("reward_source", defaults["reward_source"]) == "llm":
        out.add("reward_fraction")
    if training.get("dpo_check", defaults["dpo_check"]) == "margin":
        out.add("dpo_check_features")
    return out


def _candidates_differ(saved: dict, now: dict) -> str | None:
    """How two training configs' round-1 candidates differ, from their candidate settings: None when they are the
    same (the settings agree, but for a `reward_fraction` that neither's reward reads: 'llm' takes the max);
    'measure' when they are the same candidates and LLM reward texts measured another way (`reward_source` 'llm'
    ↔ 'share', or another `reward_fraction` of 'share'); 'other' otherwise."""
    defaults = json.loads(TrainConfig().to_json())
    diff = {k for k in (s.split(".", 1)[1] for s in _CANDIDATE_SETTINGS)
            if saved.get(k, defaults[k]) != now.get(k, defaults[k])}
    sources = {saved.get("reward_source", defaults["reward_source"]),
               now.get("reward_source", defaults["reward_source"])}
    diff -= _unread(saved) & _unread(now)
    if not diff:
        return None
    return "measure" if diff <= {"reward_source", "reward_fraction"} and sources <= set(_MEASURES) else "other"


def _default_store():
    from saexplain.cache.pipeline import default_store_path

    return default_store_path()

