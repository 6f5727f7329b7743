"""litgpt/flops.py: matmul parameters and FLOPs per token against hand counts, and the peak-FLOPs table."""

import pytest
import torch

from litgpt import GPT, Config
from litgpt.flops import PEAK_BF16_FLOPS, flops_per_token, matmul_params, peak_flops

SEQ = 32
# two layers, n_embd 16, 2 heads of 8, vocab 60 padded to 64
TINY = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=60, padding_multiple=64, block_size=SEQ)
MLA = dict(q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)

# name: (config overrides, matmul weights counted by hand, attention score FLOPs per token by hand)
CASES = {
    # qkv 16 x (2 + 2 + 2) x 8 = 768, proj 2 x 8 x 16 = 256, GptNeoxMLP fc + proj 2 x 16 x 64 = 2048 -> 3072 a layer
    # x 2 layers + lm_head 16 x 64 = 1024; scores and values: 2 x 32 positions x 2 heads x (8 + 8) x 2 layers
    "mha": (dict(), 2 * (768 + 256 + 2048) + 1024, 2 * SEQ * 2 * (8 + 8) * 2),
    # qkv 16 x (2 + 1 + 1) x 8 = 512, proj 256, LLaMAMLP 3 x 16 x 24 = 1152 -> 1920 a layer
    "mqa-llama": (
        dict(n_query_groups=1, mlp_class_name="LLaMAMLP", intermediate_size=24),
        2 * (512 + 256 + 1152) + 1024, 2 * SEQ * 2 * (8 + 8) * 2,
    ),
    # q 16 x 2 x (8 + 4) = 384, kv_a 16 x (16 + 4) = 320, kv_b 16 x 2 x (8 + 8) = 512, proj 2 x 8 x 16 = 256;
    # scores over qk width 12 and values of width 8
    "mla": (dict(latent_attention=MLA), 2 * (384 + 320 + 512 + 256 + 2048) + 1024, 2 * SEQ * 2 * (12 + 8) * 2),
    # q through a rank-8 bottleneck: 8 x 16 + 8 x 2 x 12 = 320 instead of 384
    "mla-qlora": (
        dict(latent_attention={**MLA, "q_lora_rank": 8}), 2 * (320 + 320 + 512 + 256 + 2048) + 1024,
        2 * SEQ * 2 * (12 + 8) * 2,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_flops_per_token_matches_a_hand_count(case):
    overrides, weights, attention = CASES[case]
    config = Config(**TINY, **overrides)
    assert matmul_params(config) == weights
    assert flops_per_token(config, SEQ, training=False) == 2 * weights + attention
    assert flops_per_token(config, SEQ) == 3 * (2 * weights + attention)  # forward + backward (2x forward)
    assert isinstance(flops_per_token(config, SEQ), float)


@pytest.mark.parametrize("case", CASES)
def test_matmul_params_are_the_models_linear_weights(case):
    """The count is every nn.Linear weight of the real model (biases, norms and the embedding lookup excluded)."""
    config = Config(**TINY, **CASES[case][0])
    model = GPT(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(config) == linear


def test_attention_flops_grow_linearly_with_the_sequence():
    config = Config(**TINY)
    per_position = 2 * 2 * (8 + 8) * 2  # 2 FLOPs x heads x (qk + v widths) x layers, per extra position
    assert flops_per_token(config, 64, training=False) - flops_per_token(config, 32, training=False) == 32 * per_position


def test_peak_flops_on_the_cpu_is_none():
    assert peak_flops(torch.device("cpu")) is None


@pytest.mark.parametrize(
    "device_name, expected",
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
     ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla T4", None)],
)
def test_peak_flops_by_cuda_device_name(monkeypatch, device_name, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    assert peak_flops(torch.device("cuda")) == expected
    assert expected is None or expected in PEAK_BF16_FLOPS.values()
