"""The conversion commands under upstream litgpt's names: `litgpt convert_to_litgpt` (Hugging Face -> ours),
`litgpt convert_from_litgpt` (ours -> Hugging Face) and `litgpt convert_pretrained_checkpoint` (a pretraining
checkpoint -> the weights alone), run through `litgpt.__main__.main`."""

from pathlib import Path

import pytest
import torch

from litgpt.__main__ import main
from litgpt.checkpoint import load_checkpoint
from test_download import hf_model_dir  # noqa: F401  (a fixture: a tiny random transformers Llama)
from test_pretrain import run_cli, text_dir, tiny_args  # noqa: F401  (text_dir: a fixture)


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_convert_to_litgpt_and_back(hf_model_dir, tmp_path):  # noqa: F811
    from transformers import LlamaForCausalLM

    hf_model, hf_dir = hf_model_dir
    main(["convert_to_litgpt", str(hf_dir), "--output_dir", str(tmp_path / "lit")])
    model = load_checkpoint(tmp_path / "lit").eval()
    idx = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        expected = hf_model(idx).logits
        torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "lit" / "tokenizer.json").is_file()
    main(["convert_from_litgpt", str(tmp_path / "lit"), "--output_dir", str(tmp_path / "hf-again")])
    again = LlamaForCausalLM.from_pretrained(tmp_path / "hf-again", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(idx).logits, expected, atol=1e-5, rtol=1e-5)


def test_conversion_refusals_are_one_line(tmp_path, capsys):
    code, err = run_main(capsys, ["convert_to_litgpt", str(tmp_path)])
    assert code == 2 and err == (f"litgpt: error: {str(tmp_path)!r} has no config.json; point at a Hugging Face model "
                                 "directory\n")
    code, err = run_main(capsys, ["convert_from_litgpt", str(tmp_path / "nothing"), "--output_dir", str(tmp_path)])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("litgpt: error: ")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, text_dir) -> Path:  # noqa: F811
    """The final checkpoint of a 2-step `litgpt pretrain` run: model, optimizer and counters in lit_model.pth."""
    out = tmp_path_factory.mktemp("pretrain") / "out"
    result = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "2"}))
    assert result.returncode == 0, result.stderr
    return out / "final"


def test_convert_pretrained_checkpoint_keeps_the_weights_alone(pretrained, tmp_path, capsys):
    from litgpt.api import LLM

    out = tmp_path / "plain"
    main(["convert_pretrained_checkpoint", str(pretrained), "--output_dir", str(out)])
    state = torch.load(pretrained / "lit_model.pth", weights_only=True)
    assert {"model", "optimizer", "step_count"} <= set(state)
    plain = torch.load(out / "lit_model.pth", weights_only=True)
    assert plain.keys() == state["model"].keys()
    assert all(torch.equal(plain[k], state["model"][k]) for k in plain)
    assert (out / "lit_model.pth").stat().st_size < (pretrained / "lit_model.pth").stat().st_size / 2
    assert sorted(p.name for p in out.iterdir()) == ["lit_model.pth", "model_config.yaml", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert (out / "model_config.yaml").read_text() == (pretrained / "model_config.yaml").read_text()
    capsys.readouterr()
    texts = [LLM.load(d, device="cpu").generate("the cat", max_new_tokens=5, temperature=0) for d in (pretrained, out)]
    assert texts[0] == texts[1]


def test_convert_pretrained_checkpoint_refusals(pretrained, tmp_path, capsys):
    code, err = run_main(capsys, ["convert_pretrained_checkpoint", str(tmp_path / "none"), "--output_dir",
                                  str(tmp_path / "o")])
    assert (code, err) == (2, f"litgpt: error: --checkpoint_dir {str(tmp_path / 'none')!r} is not a directory; point "
                              "at a `litgpt pretrain` checkpoint (e.g. out/pretrain/NAME/final)\n")
    code, err = run_main(capsys, ["convert_pretrained_checkpoint", str(pretrained), "--output_dir", str(pretrained)])
    assert code == 2 and err.startswith(f"litgpt: error: --output_dir {str(pretrained)!r} is --checkpoint_dir")
    # a model_config.yaml that is not the weights' model
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "lit_model.pth").write_bytes((pretrained / "lit_model.pth").read_bytes())
    config = (pretrained / "model_config.yaml").read_text().replace("n_layer: 1", "n_layer: 2")
    (mismatched / "model_config.yaml").write_text(config)
    code, err = run_main(capsys, ["convert_pretrained_checkpoint", str(mismatched), "--output_dir",
                                  str(tmp_path / "o")])
    assert code == 2 and len(err.splitlines()) == 1
    assert "does not hold the model of model_config.yaml (no 'transformer.h.1." in err, err
    assert not (tmp_path / "o").exists()
