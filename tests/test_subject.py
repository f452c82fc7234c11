"""Subject model + SAE + oracle on tiny real models: the oracle must equal a hand-written forward + encode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import D_MODEL, D_SAE, SENTENCES, make_saelens_sae
from saexplain.errors import ConfigError, SaexplainError
from saexplain.subject.hookpoints import Hookpoint
from saexplain.subject.model import SubjectModel, load_model_and_tokenizer
from saexplain.subject.oracle import Oracle, SubjectConfig
from saexplain.subject.sae import load_sae


# ------------------------------------------------------------------------------------ hand-written reference
def reference_hidden(subject: SubjectModel, text: str, hidden_index: int) -> torch.Tensor:
    """Full forward (all blocks + lm_head) with output_hidden_states; BOS row dropped."""
    ids = [subject.tokenizer.bos_token_id] + subject.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = subject.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[hidden_index][0, 1:]


def reference_encode(kind: str, folder, x: torch.Tensor) -> torch.Tensor:
    """Dense [N, d_sae] activations written from the formats' definitions, not through sae-lens."""
    cfg = json.loads((folder / "cfg.json").read_text())
    if kind == "sparsify":  # sparsify: (x - b_dec) @ encoder.T + bias → ReLU → top-k
        w = load_file(folder / "sae.safetensors")
        pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
        vals, idx = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals)
    w = load_file(folder / "sae_weights.safetensors")
    if cfg.get("normalize_activations") == "constant_norm_rescale":
        x = x * math.sqrt(cfg["d_in"]) / x.norm(dim=-1, keepdim=True)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    arch = cfg["architecture"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > w["threshold"])
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * w["W_dec"].norm(dim=-1)
    vals, idx = pre.topk(cfg["k"], dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def oracle_for(tiny_model_dir, folder, **kw) -> Oracle:
    return Oracle.from_config(SubjectConfig(model=str(tiny_model_dir), sae=str(folder), **kw))


KINDS = ["standard", "jumprelu", "topk", "standard-normrescale", "topk-norescale", "sparsify"]


# ----------------------------------------------------------------------------------------------- forward
def test_truncated_forward_equals_full_forward_and_skips_later_blocks(tiny_subject):
    text = SENTENCES[1]
    calls = {"later_block": 0, "lm_head": 0}
    h1 = tiny_subject.layers[1].register_forward_hook(lambda *a: calls.__setitem__("later_block", calls["later_block"] + 1))
    h2 = tiny_subject.model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    try:
        ids, _ = tiny_subject.tokenize([text])[0]
        got = tiny_subject.hidden(torch.tensor([ids]))[0, 1:]
        assert calls == {"later_block": 0, "lm_head": 0}, "blocks after the hookpoint must not run"
    finally:
        h1.remove()
        h2.remove()
    torch.testing.assert_close(got, reference_hidden(tiny_subject, text, 1))


@pytest.mark.parametrize("hook,index", [("blocks.0.hook_resid_pre", 0), ("blocks.1.hook_resid_pre", 1),
                                        ("layers.0", 1), ("model.layers.0", 1)])
def test_hookpoint_names_select_the_right_stream(tiny_model_dir, hook, index):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    subject = SubjectModel(model, tok, hook)
    ids, _ = subject.tokenize([SENTENCES[0]])[0]
    torch.testing.assert_close(subject.hidden(torch.tensor([ids]))[0, 1:], reference_hidden(subject, SENTENCES[0], index))


def test_last_block_output_matches_a_hook_on_the_full_forward(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    subject = SubjectModel(model, tok, "layers.1")
    ids = torch.tensor([subject.tokenize([SENTENCES[2]])[0][0]])
    seen = {}
    handle = subject.layers[1].register_forward_hook(lambda m, a, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    torch.testing.assert_close(subject.hidden(ids), seen["h"])


@pytest.mark.parametrize("name,expected", [
    ("layers.6", Hookpoint(6, "post")), ("blocks.6.hook_resid_post", Hookpoint(6, "post")),
    ("blocks.7.hook_resid_pre", Hookpoint(7, "pre")), ("model.layers.12", Hookpoint(12, "post")),
])
def test_hookpoint_parsing(name, expected):
    assert Hookpoint.parse(name) == expected
    assert Hookpoint.parse("blocks.6.hook_resid_post").same_stream(Hookpoint.parse("blocks.7.hook_resid_pre"))


def test_tokens_keep_spaces_and_exclude_bos(tiny_subject):
    for text, (ids, strings) in zip(SENTENCES, tiny_subject.tokenize(SENTENCES)):
        assert ids[0] == tiny_subject.tokenizer.bos_token_id
        assert len(strings) == len(ids) - 1
        assert "".join(strings) == text


# ------------------------------------------------------------------------------------------------ oracle
@pytest.mark.parametrize("kind", KINDS)
def test_oracle_equals_hand_written_forward_and_encode(tiny_model_dir, sae_folders, kind):
    oracle = oracle_for(tiny_model_dir, sae_folders[kind])
    feats = list(range(D_SAE))
    results = oracle.activations(SENTENCES, feats)
    sparse = oracle.activations(SENTENCES)
    fired = 0
    for text, res, sp in zip(SENTENCES, results, sparse):
        want = reference_encode(kind, sae_folders[kind], reference_hidden(oracle.subject, text, 1))
        np.testing.assert_allclose(res.acts, want.numpy(), rtol=1e-4, atol=1e-4)
        fired += int((want > 0).sum())
        # the sparse view holds the largest activations of each token, with the right feature ids
        top_vals, _ = want.topk(sp.acts.shape[1], dim=-1)
        np.testing.assert_allclose(sp.acts, top_vals.numpy(), rtol=1e-4, atol=1e-4)
        for i in range(len(sp.tokens)):
            for v, j in zip(sp.acts[i], sp.indices[i]):
                assert abs(want[i, j].item() - v) < 1e-4
    assert fired > 0, "the test SAE must actually fire somewhere"


def test_batching_and_padding_do_not_change_results(tiny_model_dir, sae_folders):
    oracle = oracle_for(tiny_model_dir, sae_folders["topk"], batch_size=4)
    together = oracle.activations(SENTENCES * 3, [0, 5, 17])
    for i, text in enumerate(SENTENCES * 3):
        (alone,) = oracle.activations([text], [0, 5, 17])
        assert alone.tokens == together[i].tokens
        np.testing.assert_allclose(alone.acts, together[i].acts, rtol=1e-4, atol=1e-5)


def test_topk_oracle_never_builds_a_dense_output(tiny_model_dir, sae_folders, monkeypatch):
    oracle = oracle_for(tiny_model_dir, sae_folders["topk"])
    monkeypatch.setattr(oracle.sae, "encode", lambda *a: pytest.fail("dense sae.encode called"))
    res = oracle.activations(SENTENCES[:2])
    assert res[0].indices.shape == (len(res[0].tokens), 8)
    first = int(res[0].indices[0, 0])
    assert res[0].feature(first)[0] == pytest.approx(float(res[0].acts[0, 0]))
    (requested,) = oracle.activations(SENTENCES[:1], [first])
    assert requested.acts[0, 0] == pytest.approx(float(res[0].acts[0, 0]))


def test_feature_view_and_max(tiny_model_dir, sae_folders):
    oracle = oracle_for(tiny_model_dir, sae_folders["standard"])
    (res,) = oracle.activations([SENTENCES[1]], [3, 7])
    np.testing.assert_array_equal(res.feature(7), res.acts[:, 1])
    assert res.max(3) == pytest.approx(float(res.acts[:, 0].max()))
    assert oracle.max_activation([SENTENCES[1]], 3) == [pytest.approx(res.max(3))]
    with pytest.raises(KeyError):
        res.feature(4)


def test_empty_text_gives_no_tokens(tiny_model_dir, sae_folders):
    oracle = oracle_for(tiny_model_dir, sae_folders["topk"])
    (res,) = oracle.activations([""], [1])
    assert res.tokens == [] and res.acts.shape == (0, 1) and res.max(1) == 0.0


def test_decoder_direction_and_logit_lens(tiny_model_dir, sae_folders):
    oracle = oracle_for(tiny_model_dir, sae_folders["standard"])
    sae = load_sae(str(sae_folders["standard"]))
    torch.testing.assert_close(oracle.decoder_direction(5), sae.W_dec[5])
    view = oracle.logit_lens(5, k=4)
    model = oracle.subject.model
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(sae.W_dec[5].view(1, 1, -1))).view(-1)
    top = logits.topk(4)
    assert [t for t, _ in view.top] == [oracle.subject.tokenizer.decode([int(i)]) for i in top.indices]
    assert [v for _, v in view.top] == pytest.approx(top.values.tolist(), rel=1e-4)
    assert view.bottom[0][1] == pytest.approx(float(logits.min()), rel=1e-4)


def test_sae_written_by_sae_lens_round_trips(sae_folders):
    for arch in ("standard", "jumprelu", "topk"):
        sae = load_sae(str(sae_folders[arch]))
        assert sae.cfg.architecture() == arch and sae.cfg.d_sae == D_SAE
        ref = make_saelens_sae(arch)
        torch.testing.assert_close(sae.W_enc, ref.W_enc)


# -------------------------------------------------------------------------------------------- bad inputs
def test_d_in_mismatch_is_one_clear_error(tiny_model_dir, tmp_path):
    make_saelens_sae("standard", d_in=D_MODEL + 1).save_model(tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"SAE d_in 65 does not match .* d_model 64"):
        oracle_for(tiny_model_dir, tmp_path / "wide")


def test_hookpoint_conflict_and_bad_names(tiny_model_dir, sae_folders):
    with pytest.raises(ConfigError, match="differs from the SAE's blocks.0.hook_resid_post"):
        oracle_for(tiny_model_dir, sae_folders["topk"], hookpoint="layers.1")
    # same tensor under another name is fine
    oracle_for(tiny_model_dir, sae_folders["topk"], hookpoint="blocks.1.hook_resid_pre")
    with pytest.raises(ConfigError, match="not understood"):
        Hookpoint.parse("blocks.1.attn.hook_z")
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="has 2 blocks"):
        SubjectModel(model, tok, "layers.5")


def test_unknown_feature_ids(tiny_model_dir, sae_folders):
    oracle = oracle_for(tiny_model_dir, sae_folders["topk"])
    for bad in (D_SAE, -1, "3", 2.0):
        with pytest.raises(SaexplainError, match="unknown feature id"):
            oracle.activations(["hi"], [bad])
    with pytest.raises(SaexplainError, match="unknown feature id"):
        oracle.logit_lens(D_SAE)
    with pytest.raises(SaexplainError, match="list of texts"):
        oracle.activations("a single string", [1])


def test_missing_files_are_one_line_errors(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="SAE not found"):
        load_sae(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither cfg.json"):
        load_sae(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="model folder not found"):
        load_model_and_tokenizer(str(tmp_path / "no_model"))
    with pytest.raises(ConfigError, match="GGUF file not found"):
        load_model_and_tokenizer(str(tmp_path / "x.gguf"))
    with pytest.raises(ConfigError, match="dtype"):
        load_sae("default", dtype="float8")
    from saexplain.subject import sae as sae_mod

    monkeypatch.setattr(sae_mod, "SHIPPED_SAE", tmp_path / "not-shipped")  # an install without the shipped SAE
    monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="default SAE is not installed"):
        load_sae("default")


def test_pretrained_path_without_hub_is_one_line_error():
    with pytest.raises(ConfigError, match="cannot load SAE .* via sae_lens") as e:
        load_sae("sae_lens:gpt2-small-res-jb:blocks.8.hook_resid_pre")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="must look like"):
        load_sae("sae_lens:only-release")


def test_subject_config_validation_and_saving(tmp_path):
    cfg = SubjectConfig(model="m", sae="s")
    assert SubjectConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    assert cfg.hash() == SubjectConfig(model="m", sae="s").hash() != SubjectConfig(model="m2", sae="s").hash()
    with pytest.raises(ConfigError, match="batch_size"):
        SubjectConfig.build(batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        SubjectConfig.build(dtype="float64")
    with pytest.raises(ConfigError, match="nonsense"):
        SubjectConfig.build(nonsense=1)


def test_real_sparsify_checkpoint_matches_sparsify_own_encode(tiny_model_dir, tmp_path):
    """A checkpoint written by EleutherAI sparsify's own Trainer, loaded by our converter: the oracle's
    activations equal sparsify's SparseCoder.encode on the same hidden states."""
    from datasets import Dataset
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok_ids = [[2] + [(7 * i + j) % 500 + 4 for j in range(31)] for i in range(64)]
    cfg = TrainConfig(SaeConfig(num_latents=D_SAE, k=6), batch_size=8, layers=[0], save_dir=str(tmp_path),
                      run_name="run", log_to_wandb=False, save_every=10**9)
    Trainer(cfg, Dataset.from_dict({"input_ids": tok_ids}).with_format("torch"), model).fit()
    folder = tmp_path / "run" / "layers.0"
    oracle = oracle_for(tiny_model_dir, folder)
    coder = SparseCoder.load_from_disk(folder)
    for text in SENTENCES[:3]:
        (res,) = oracle.activations([text], list(range(D_SAE)))
        h = reference_hidden(oracle.subject, text, 1)
        out = coder.encode(h)
        want = torch.zeros(len(h), D_SAE).scatter(-1, out.top_indices, out.top_acts.float())
        np.testing.assert_allclose(res.acts, want.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_the_shipped_default_sae_is_installed_checked_and_loads(tmp_path, monkeypatch):
    """The default SAE ships with the package (≤ 25 MB) and is installed into an empty $SAEXPLAIN_HOME on first
    use, byte for byte; a damaged shipped copy is one clear line, never a silently different SAE."""
    import hashlib
    import shutil

    from saexplain.subject import sae as sae_mod

    shipped = sae_mod.SHIPPED_SAE
    assert (shipped / "sae_weights.safetensors").stat().st_size <= 25 * 2**20
    monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path / "home"))
    folder = sae_mod.default_sae_dir()
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json"):
        assert (folder / name).read_bytes() == (shipped / name).read_bytes()
    sums = dict(reversed(line.split()) for line in (shipped / "SHA256SUMS").read_text().splitlines())
    assert hashlib.sha256((folder / "sae_weights.safetensors").read_bytes()).hexdigest() == \
        sums["sae_weights.safetensors"]
    sae = load_sae("default")
    assert sae.cfg.d_sae == 4096 and sae.cfg.d_in == 640 and sae.cfg.k == 32
    # a flipped byte in the shipped copy: refused with the file named
    bad = tmp_path / "shipped"
    shutil.copytree(shipped, bad)
    data = bytearray((bad / "sae_weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "sae_weights.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(sae_mod, "SHIPPED_SAE", bad)
    monkeypatch.setenv("SAEXPLAIN_HOME", str(tmp_path / "home2"))
    with pytest.raises(ConfigError, match="sae_weights.safetensors: the shipped default SAE is damaged"):
        sae_mod.default_sae_dir()
    assert not (tmp_path / "home2" / "saes" / "gemma-3-270m" / "blocks.6.hook_resid_post-topk" /
                "sae_weights.safetensors").exists()
