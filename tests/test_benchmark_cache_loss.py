"""`litgpt benchmark cache_loss`: a checkpoint's validation loss on a text file by the plain forward and through the
model-dtype and fp8 KV caches, side by side; bad options are one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from test_evaluate import checkpoint, tiny

from litgpt.__main__ import main

TEXT = "The cat saw the dog. Hello, how are you today? A sun is a kind of star.\n\n" * 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("ckpt"), tiny("debug-mla"))


def test_losses_side_by_side(ckpt, tmp_path, capsys):
    (tmp_path / "val.txt").write_text(TEXT)
    out = tmp_path / "out"
    main(["benchmark", "cache_loss", "--checkpoint_dirs", f"[{ckpt}, {ckpt}]", "--text", str(tmp_path / "val.txt"),
          "--kv_cache_dtypes", "[null, fp8_e4m3]", "--cache_chunk", "5", "--batch_size", "3", "--device", "cpu", "--out_dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    losses = row["losses"]
    assert list(losses) == ["plain forward", "model dtype cache", "fp8_e4m3"]
    assert row["window"] == 32 and row["tokens"] > 4 * 32 and row["tokens"] % 32 == 0
    assert losses["model dtype cache"] == pytest.approx(losses["plain forward"], rel=1e-6)
    assert 0 < abs(losses["fp8_e4m3"] - losses["model dtype cache"]) / losses["model dtype cache"] < 0.005
    printed = capsys.readouterr().out
    assert (out / "results.md").read_text() in printed
    assert "| fp8_e4m3 change |" in printed and len(re.findall(r"\| [+-]\d\.\d{3}% \|", printed)) == 2
    assert "--kv_cache_dtypes '[null, fp8_e4m3]' --cache_chunk 5" in results["command"]  # as it reparses

    main(["benchmark", "cache_loss", "--checkpoint_dirs", f"[{ckpt}]", "--text", str(tmp_path),
          "--kv_cache_dtypes", "[fp8_e4m3]", "--window", "16", "--max_tokens", "40", "--device", "cpu",
          "--out_dir", str(out)])
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert list(row["losses"]) == ["plain forward", "fp8_e4m3"] and row["tokens"] == 2 * 16


@pytest.mark.parametrize("args, message", [
    (["--cache_chunk", "0"], r"--cache_chunk must be a positive number of tokens per prefill through the KV cache, "
                             r"got 0"),
    (["--kv_cache_dtypes", "[fp8_e4m3, fp8_e4m3]"], r"--kv_cache_dtypes must name each cache format once, got "
                                                    r"\['fp8_e4m3', 'fp8_e4m3'\]"),
    (["--kv_cache_dtypes", "[fp8]"], r"kv_cache_dtype must be null \(the model's dtype\) or one of 'fp8_e4m3', "
                                     r"got 'fp8'"),
    (["--window", "64"], r"--window 64 exceeds .*'s block_size 32"),
    (["--text", "nowhere.txt"], r"--text 'nowhere.txt' does not exist; pass a .txt file or a folder of them"),
])
def test_bad_options_are_one_line_errors(args, message, ckpt, tmp_path, capsys):
    (tmp_path / "val.txt").write_text(TEXT)
    with pytest.raises(SystemExit) as exit:
        main(["benchmark", "cache_loss", "--checkpoint_dirs", f"[{ckpt}]", "--text", str(tmp_path / "val.txt"),
              "--device", "cpu", "--out_dir", str(tmp_path / "out"), *args])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and re.fullmatch(f"litgpt: error: {message}", errors[0]), errors
    assert not (tmp_path / "out").exists()


def test_readme_fp8_quality_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """The README's commands that measure an fp8 cache's quality, run as written in a scratch copy of the files they
    name, on a tiny checkpoint where the quick start's would be."""
    import shlex
    import shutil

    from test_evaluate import REPO

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(litgpt benchmark cache_loss [^\n]*\nlitgpt evaluate [^\n]*)\n```", readme).group(1)
    lines = [shlex.split(line) for line in block.splitlines()]
    shutil.copytree(REPO / "config_hub" / "evaluate", tmp_path / "config_hub" / "evaluate")
    (tmp_path / "litgpt").mkdir()
    shutil.copy(REPO / "litgpt" / "model.py", tmp_path / "litgpt" / "model.py")
    checkpoint(tmp_path / lines[1][2], tiny("debug-mla", block_size=256))
    monkeypatch.chdir(tmp_path)
    for words in lines:
        main(words[1:] + ["--device", "cpu"])
    losses = json.loads((tmp_path / "out" / "benchmark" / "cache_loss" / "results.json").read_text())["rows"][0]
    assert losses["window"] == 256 and losses["losses"]["fp8_e4m3"] != losses["losses"]["model dtype cache"]
    results = json.loads((tmp_path / "out" / "evaluate" / "debug-fp8" / "results.json").read_text())
    assert sorted(results["results"]) == ["python_code"]
