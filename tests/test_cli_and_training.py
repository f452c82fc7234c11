"""The CLI on tiny real models, the SAE training command, and the corpus reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TEST_DATA
from saexplain.cli import app
from saexplain.data.corpus import ReadStats, default_corpus, iter_documents
from saexplain.errors import SaexplainError

runner = CliRunner()


def test_help_lists_the_stages():
    out = runner.invoke(app, ["--help"]).output
    for stage in ("probe", "lens", "train-sae", "demo"):
        assert stage in out


def test_probe_prints_per_token_activations(tiny_model_dir, sae_folders, tiny_subject):
    res = runner.invoke(app, ["probe", "The cat sat on the mat.", "--feature", "3", "--feature", "11",
                              "--model", str(tiny_model_dir), "--sae", str(sae_folders["standard"])])
    assert res.exit_code == 0, res.output
    assert "f3" in res.output and "f11" in res.output
    (_, strings), = tiny_subject.tokenize(["The cat sat on the mat."])
    rows = [line for line in res.output.splitlines() if line.startswith("│ ") and line.split("│")[1].strip().isdigit()]
    assert [r.split("│")[2].strip() for r in rows] == [t.strip() for t in strings]  # one row per token
    sparse = runner.invoke(app, ["probe", "The cat sat.", "--model", str(tiny_model_dir),
                                 "--sae", str(sae_folders["topk"])])
    assert sparse.exit_code == 0 and "top features" in sparse.output


def test_cli_bad_input_is_one_line_and_exit_2(tiny_model_dir, sae_folders):
    res = runner.invoke(app, ["probe", "hi", "--feature", "99999", "--model", str(tiny_model_dir),
                              "--sae", str(sae_folders["topk"])])
    assert res.exit_code == 2
    assert "unknown feature id 99999" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["probe", "hi", "--batch-size", "0", "--model", str(tiny_model_dir)])
    assert res.exit_code == 2 and "batch_size" in res.output


def test_lens_command(tiny_model_dir, sae_folders):
    res = runner.invoke(app, ["lens", "4", "--k", "3", "--model", str(tiny_model_dir),
                              "--sae", str(sae_folders["jumprelu"])])
    assert res.exit_code == 0, res.output
    assert "promotes" in res.output and "suppresses" in res.output


def test_train_sae_command_produces_a_loadable_sae_with_metrics(tiny_model_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text((TEST_DATA / "grimm_tales.txt").read_text(encoding="utf-8")[:60_000])
    out = tmp_path / "sae"
    args = ["train-sae", "--model", str(tiny_model_dir), "--hookpoint", "layers.0", "--corpus", str(corpus),
            "--context", "32", "--tokens", "8192", "--d-sae", "128", "--k", "4", "--batch-tokens", "512",
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_tokens_seen"] >= 8192 and metrics["mean_l0"] <= 4 + 1e-6
    assert -1 < metrics["fraction_variance_explained"] <= 1
    saved = json.loads((out / "saexplain_train_config.json").read_text())
    assert saved["d_sae"] == 128
    # the trained SAE is usable by the oracle straight away, and the hookpoint came from its cfg
    res = runner.invoke(app, ["probe", "Once upon a time", "--model", str(tiny_model_dir), "--sae", str(out)])
    assert res.exit_code == 0, res.output
    again = runner.invoke(app, args)
    assert "already trained" in again.output


def test_corpus_reader_on_the_shipped_and_test_files():
    stats = ReadStats()
    docs = list(iter_documents([TEST_DATA / "news_sample.csv"], stats=stats))
    assert len(docs) == 6 and stats.documents == 6
    # title + description joined; the label column and the number-only column are left out
    assert docs[0].text == "Harbour bridge reopens after repairs The old harbour bridge reopened on Monday " \
                           "after six weeks of repairs, the city council said."
    assert not any(d.text[0].isdigit() or d.text.rstrip()[-1].isdigit() for d in docs)
    shipped = default_corpus()
    assert [Path(p).name for p in shipped] == ["grimm_tales.txt", "tinyshakespeare.txt"]
    tales = list(iter_documents([shipped[0]]))
    assert len(tales) > 1000 and all("\r" not in d.text and "\n\n" not in d.text for d in tales)
    assert not tales[0].text.startswith("\ufeff")
    # kept as written: the line breaks of a hard-wrapped paragraph, a dialogue's speaker turns
    assert any("\n" in d.text for d in tales[:50])
    lines = list(iter_documents([shipped[1]]))
    assert lines[0].text == "First Citizen:\nBefore we proceed any further, hear me speak."


def test_corpus_bad_bytes_counted_and_bad_input_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text\n\nbroken \xff\xfe bytes here" + b" and much more good text" * 20)
    stats = ReadStats()
    docs = list(iter_documents([bad], stats=stats))
    assert len(docs) == 2 and stats.replaced_bytes == 2
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SaexplainError, match="empty corpus"):
        list(iter_documents([tmp_path / "empty.txt"]))
    with pytest.raises(SaexplainError, match="not found"):
        list(iter_documents([tmp_path / "missing.csv"]))
    (tmp_path / "x.csv").write_text("label,text\n1,hello\n")
    with pytest.raises(SaexplainError, match="no column 'body'"):
        list(iter_documents([tmp_path / "x.csv"], column="body"))


def test_parquet_and_hf_dataset_path_on_a_local_folder(tmp_path):
    """The `hf:` path is `datasets.load_dataset`, as online; here it reads a local folder of parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.table({"body": ["first document", "second one", ""], "label": [1, 2, 3]}),
                   folder / "train.parquet")
    docs = list(iter_documents([folder / "train.parquet"], column="body"))
    assert [d.text for d in docs] == ["first document", "second one"]
    hf = list(iter_documents([f"hf:{folder}:train"], column="body"))
    assert [d.text for d in hf] == ["first document", "second one"]
    with pytest.raises(SaexplainError, match="no column 'text'"):
        list(iter_documents([f"hf:{folder}:train"]))
    with pytest.raises(SaexplainError, match="cannot load dataset"):
        list(iter_documents([f"hf:{tmp_path / 'nope'}:train"]))
