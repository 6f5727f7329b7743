"""FP8 block-quantized checkpoints (DeepSeek-V3/R1, Moonlight): e4m3 weights with one scale_inv per 128x128 block
are dequantized while converting; the converted model computes what the dequantized model computes."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from litgpt.checkpoint import load_checkpoint
from litgpt.fp8 import dequantize_fp8_blocks
from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
from test_convert_hf_checkpoint import VOCAB, make_hf

E4M3_MAX = 448.0


def quantize_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """weight as float8 e4m3 with one scale per block (absmax / 448), the way DeepSeek's checkpoints store it."""
    rows, cols = weight.shape
    scale_inv = torch.empty(math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            part = weight[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].float()
            scale = part.abs().max().clamp(min=1e-12) / E4M3_MAX
            scale_inv[i, j] = scale
            q[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = (part / scale).to(torch.float8_e4m3fn)
    return q, scale_inv


def dequantize_by_loop(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    out = torch.empty(q.shape)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            out[rows, cols] = q[rows, cols].float() * scale_inv[i, j]
    return out


@pytest.mark.parametrize("shape", [(256, 384), (300, 200), (100, 130), (7, 129)])
def test_dequantize_blocks_with_ragged_edges(shape):
    weight = torch.randn(shape) * 3
    q, scale_inv = quantize_blocks(weight, (128, 128))
    dequantized = dequantize_fp8_blocks(q, scale_inv)
    assert dequantized.dtype == torch.float32
    torch.testing.assert_close(dequantized, dequantize_by_loop(q, scale_inv, (128, 128)), atol=0, rtol=0)
    torch.testing.assert_close(dequantized, weight, atol=1e-3, rtol=0.07)  # e4m3: 3 mantissa bits, subnormals


def test_a_scale_of_the_wrong_shape_is_one_line():
    with pytest.raises(ValueError, match=r"^scale_inv of shape \(1, 1\) does not fit a 300x200 weight in 128x128 "
                       r"blocks \(expected 3x2\); check quantization_config.weight_block_size in config.json$"):
        dequantize_fp8_blocks(torch.zeros(300, 200, dtype=torch.float8_e4m3fn), torch.ones(1, 1))


@pytest.mark.parametrize("case", ["deepseek-v3-qlora", "deepseek-v3-moe-yarn"])
@pytest.mark.parametrize("block", [(128, 128), (16, 8)])
def test_fp8_checkpoint_converts_to_the_dequantized_model(case, block, tmp_path):
    """Every projection matrix stored as e4m3 + scale_inv (the (16, 8) blocks leave partial blocks at the edges of
    the 24- and 40-wide matrices): the converted weights are bfloat16, and the logits equal those of the HF model
    holding the dequantized weights (rounded to bfloat16, as converted)."""
    hf_model, hf_dir = make_hf(case, tmp_path)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    stored, reference = {}, {}
    for name, tensor in state.items():
        if tensor.ndim == 2 and name.endswith("proj.weight"):
            q, scale_inv = quantize_blocks(tensor, block)
            stored[name], stored[name + "_scale_inv"] = q, scale_inv
            reference[name] = dequantize_by_loop(q, scale_inv, block).to(torch.bfloat16).float()
        else:
            stored[name] = tensor
    assert sum(t.dtype == torch.float8_e4m3fn for t in stored.values()) >= 10
    (hf_dir / "model.safetensors").unlink()
    save_file(stored, str(hf_dir / "model.safetensors"))
    config = json.loads((hf_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    (hf_dir / "config.json").write_text(json.dumps(config))

    out = convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")
    converted = torch.load(out / "lit_model.pth", weights_only=True)
    assert converted["transformer.h.0.attn.proj.weight"].dtype == torch.bfloat16
    assert not any(k.endswith("_scale_inv") for k in converted)
    hf_model.load_state_dict(reference, strict=False)
    model = load_checkpoint(out, dtype=torch.float32).eval()
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_model(idx).logits, atol=1e-5, rtol=1e-5)


def test_float8_weight_without_its_scale_is_one_line(tmp_path):
    hf_model, hf_dir = make_hf("deepseek-v3-qlora", tmp_path)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    state["model.layers.0.self_attn.o_proj.weight"] = state["model.layers.0.self_attn.o_proj.weight"].to(
        torch.float8_e4m3fn)
    save_file(state, str(hf_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"^'model.layers.0.self_attn.o_proj.weight' is stored as torch.float8_e4m3fn "
                       r"but the checkpoint has no model.layers.0.self_attn.o_proj.weight_scale_inv"):
        convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")
