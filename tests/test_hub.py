"""Hub ids as checkpoint paths: ORG/NAME means checkpoints/ORG/NAME (where `litgpt download` puts it) when the path
itself does not exist, in every command's checkpoint options and in `LLM.load`."""

import inspect
import io
from pathlib import Path

import pytest

from litgpt.__main__ import main
from litgpt.hub import is_repo_id, resolve_checkpoint_dir, resolve_checkpoint_options
from test_generate import make_checkpoint

REPO = "tiny-org/tiny-model"


@pytest.fixture
def downloaded(tmp_path, monkeypatch) -> Path:
    """A checkpoint at checkpoints/tiny-org/tiny-model under the working directory (tmp_path)."""
    monkeypatch.chdir(tmp_path)
    checkpoint = make_checkpoint(tmp_path / "made")
    target = tmp_path / "checkpoints" / REPO
    target.parent.mkdir(parents=True)
    checkpoint.rename(target)
    return target


def test_repo_id_spelling():
    assert is_repo_id("EleutherAI/pythia-160m") and is_repo_id("meta-llama/Llama-3.2-1B")
    assert not any(map(is_repo_id, ["pythia-160m", "/abs/path", "a/b/c", "../x", "./x", "a/..", "a b/c"]))


def test_resolution_rules(downloaded, tmp_path):
    assert resolve_checkpoint_dir(REPO) == Path("checkpoints") / REPO
    assert resolve_checkpoint_dir(REPO).resolve() == downloaded.resolve()
    # a path that exists wins over the download
    (tmp_path / "tiny-org" / "tiny-model").mkdir(parents=True)
    assert resolve_checkpoint_dir(REPO) == Path(REPO)
    # what is not spelled ORG/NAME is left to the command
    assert resolve_checkpoint_dir("/no/such/dir") == Path("/no/such/dir")
    assert resolve_checkpoint_dir("single") == Path("single")
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint_dir("other-org/missing", "tokenizer_dir")
    assert str(info.value) == (
        "--tokenizer_dir 'other-org/missing': neither other-org/missing nor checkpoints/other-org/missing exists; "
        "download the model with `litgpt download other-org/missing`, or point at a checkpoint directory"
    )


def test_every_checkpoint_option_of_a_command_line_is_resolved(downloaded):
    from litgpt.pretrain import setup as pretrain
    from litgpt.scripts.merge_lora import merge_lora

    expected = str(Path("checkpoints") / REPO)
    params = params_pretrain = list(inspect.signature(pretrain).parameters)
    args = ["--tokenizer_dir", REPO, f"--initial_checkpoint_dir={REPO}", "--out_dir", "out/x"]
    assert resolve_checkpoint_options(["pretrain"], params, args) == [
        "--tokenizer_dir", expected, f"--initial_checkpoint_dir={expected}", "--out_dir", "out/x"]
    params = list(inspect.signature(merge_lora).parameters)
    assert resolve_checkpoint_options(["merge_lora"], params, ["--pretrained_checkpoint_dir", REPO]) == [
        "--pretrained_checkpoint_dir", expected]
    # a --config yaml's hub ids: the resolved values follow the --config option, so later options still win
    config = Path("run.yaml")
    config.write_text(f"tokenizer_dir: {REPO}\nout_dir: {REPO}\ninitial_checkpoint_dir: null\n")
    args = ["--config", str(config), "--tokenizer_dir", "other"]
    assert resolve_checkpoint_options(["pretrain"], params_pretrain, args) == [
        "--config", str(config), f"--tokenizer_dir={expected}", "--tokenizer_dir", "other"]
    config.write_text("tokenizer_dir: nobody/nothing\n")
    with pytest.raises(FileNotFoundError, match="^--tokenizer_dir 'nobody/nothing': neither nobody/nothing nor"):
        resolve_checkpoint_options(["pretrain"], params_pretrain, [f"--config={config}"])
    # download's --checkpoint_dir is the root it writes under, not a checkpoint
    assert resolve_checkpoint_options(["download"], ["repo_id", "checkpoint_dir"], ["--checkpoint_dir", "a/b"]) == [
        "--checkpoint_dir", "a/b"]


def test_generate_and_chat_and_llm_load_take_a_hub_id(downloaded, capsys, monkeypatch):
    from litgpt.api import LLM

    args = ["--prompt", "hello", "--max_new_tokens", "5", "--temperature", "0", "--device", "cpu"]
    main(["generate", REPO, *args])
    by_id = capsys.readouterr().out
    main(["generate", str(downloaded), *args])
    assert capsys.readouterr().out == by_id
    llm = LLM.load(REPO, device="cpu")
    assert Path(llm.checkpoint_dir).resolve() == downloaded.resolve()
    assert by_id.startswith("hello" + llm.generate("hello", max_new_tokens=5, temperature=0))
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\n"))
    main(["chat", f"--checkpoint_dir={REPO}", "--max_new_tokens", "3", "--device", "cpu"])
    assert ">> Reply: " in capsys.readouterr().out


@pytest.mark.parametrize("command", ["generate", "chat", "finetune_lora", "finetune_full", "merge_lora",
                                     "convert_to_mla"])
def test_a_missing_hub_id_is_one_line_naming_both_paths(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = ["--out_dir", "out"] if command == "convert_to_mla" else []
    with pytest.raises(SystemExit) as info:
        main([command, "nobody/nothing", *extra])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "litgpt: error: --checkpoint_dir 'nobody/nothing': neither nobody/nothing nor checkpoints/nobody/nothing "
        "exists; download the model with `litgpt download nobody/nothing`, or point at a checkpoint directory\n"
    )


def test_llm_load_of_a_missing_hub_id(tmp_path, monkeypatch):
    """A hub id with no checkpoints/ORG/NAME is downloaded first, as upstream's LLM.load does; offline, that fails
    in one line that names the id and the way out."""
    from litgpt.api import LLM

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"^could not download nobody/nothing: offline mode is on \(HF_HUB_OFFLINE is "
                       r"set\); unset HF_HUB_OFFLINE to download"):
        LLM.load("nobody/nothing")
    assert not (tmp_path / "checkpoints" / "nobody" / "nothing").exists()
