"""Decode-time weight folding: a folded one-token step computes what the block's own modules compute."""

import pytest
import torch

from litgpt import GPT, Config
from litgpt.fold import fold_for_decode, is_folded, unfold
from litgpt.model import Block
from litgpt.projection import stack_inputs, stack_outputs

from test_model import CASES, MLA_DIMS, randomize

FOLD_CASES = {
    **CASES,
    "mla-llama": dict(
        latent_attention={**MLA_DIMS, "q_lora_rank": None}, parallel_residual=False, norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP", intermediate_size=96, bias=False,
    ),
    "mla-all-biases": dict(latent_attention={**MLA_DIMS, "q_lora_rank": None}, attn_bias=True, bias=True),
}


# how a folded MLA step treats W_UK and W_UV: folded into the maps (small models), or applied in the step (models
# whose folded maps would be much larger, `MultiheadLatentAttention.folds_absorption`); the limit forced either way
ABSORPTION = {"folded": 10**12, "in the step": -(10**12)}


@pytest.fixture(params=sorted(ABSORPTION))
def absorption(request, monkeypatch):
    monkeypatch.setattr("litgpt.attention.ABSORB_EXTRA_PARAMS", ABSORPTION[request.param])
    return request.param


KERNEL_MLA = dict(latent_attention={**MLA_DIMS, "q_lora_rank": None, "qk_rope_head_dim": 16})  # widths the kernels take


def decode_logits(model: GPT, prompt: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Prefill `prompt` (B, T), then feed `steps` (B, n) one token at a time at per-row positions; logits (B, n, V)."""
    B, T = prompt.shape
    model.set_kv_cache(B, T + steps.size(1))
    model(prompt, input_pos=torch.arange(T))
    out = []
    for i in range(steps.size(1)):
        pos = torch.full((B, 1), T + i)
        out.append(model(steps[:, i : i + 1], input_pos=pos)[:, 0])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_folded_decode_equals_unfolded_float64(case, absorption):
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=64, **FOLD_CASES[case])
    model = randomize(GPT(config)).to(torch.float64).eval()
    prompt, steps = torch.randint(0, config.vocab_size, (2, 7)), torch.randint(0, config.vocab_size, (2, 4))
    with torch.no_grad():
        plain = decode_logits(model, prompt, steps)
        fold_for_decode(model)
        assert is_folded(model)
        folded = decode_logits(model, prompt, steps)
    assert (plain - folded).abs().max().item() < 1e-9 * plain.abs().max().item()
    assert plain.abs().max().item() > 1e-2


def test_only_cached_one_token_steps_take_the_folded_path(monkeypatch):
    config = Config.from_name("debug-mla", block_size=32)
    model = randomize(GPT(config)).eval()
    fold_for_decode(model)

    def folded_forward(*args):
        raise RuntimeError("folded path taken")

    monkeypatch.setattr(Block, "folded_step", folded_forward)
    model.set_kv_cache(1, 16)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), input_pos=torch.arange(5))  # prefill: the blocks' own modules
        model(torch.zeros(1, 5, dtype=torch.long))  # no cache: the blocks' own modules
        model(torch.zeros(1, 1, dtype=torch.long))  # one token without a cache: the blocks' own modules
        with pytest.raises(RuntimeError, match="folded path taken"):
            model(torch.zeros(1, 1, dtype=torch.long), input_pos=torch.tensor([5]))


def test_folded_weights_are_not_in_the_state_dict_and_unfold_restores():
    config = Config.from_name("debug-mla", block_size=32)
    model = GPT(config)
    keys = set(model.state_dict())
    fold_for_decode(model)
    assert set(model.state_dict()) == keys
    assert any(name.startswith("transformer.h.0.folded.") for name, _ in model.named_buffers())
    unfold(model)
    assert not is_folded(model)
    assert not any(".folded." in name for name, _ in model.named_buffers())


def test_folded_bf16_close_to_unfolded():
    torch.manual_seed(0)
    config = Config.from_name("debug-mla", block_size=64)
    model = randomize(GPT(config)).to(torch.bfloat16).eval()
    prompt, steps = torch.randint(0, config.vocab_size, (2, 9)), torch.randint(0, config.vocab_size, (2, 3))
    with torch.no_grad():
        plain = decode_logits(model, prompt, steps).float()
        fold_for_decode(model)
        folded = decode_logits(model, prompt, steps).float()
    assert ((plain - folded).norm() / plain.norm()).item() < 2e-2


def test_stacked_maps():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64)
    a = (torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    b = (torch.randn(2, 5, dtype=torch.float64), None)
    w, bias = stack_outputs(a, b)
    expected = torch.cat((x @ a[0].T + a[1], x @ b[0].T), dim=-1)
    assert torch.allclose(x @ w.T + bias, expected)
    u = torch.randn(3, 4, dtype=torch.float64)
    c = (torch.randn(6, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64))
    d = (torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64))
    w, bias = stack_inputs(c, d)
    assert torch.allclose(torch.cat((x, u), dim=-1) @ w.T + bias, x @ c[0].T + c[1] + u @ d[0].T + d[1])


def unfolded_eager_and_folded_steps(model: GPT, prompts: list[torch.Tensor], tokens: torch.Tensor,
                                    start: torch.Tensor, mode: str) -> tuple[dict, dict]:
    """Prefill `prompts`, then feed tokens (B, T) from positions start (B, 1): T - 1 steps of the unfolded eager step
    and, after them, of the folded step in `mode`. Returns ({folded: KV caches flattened}, {folded: logits (B, V)} of
    the last token), each keyed False / True."""
    from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, prefill

    B, T = tokens.shape
    device = model.lm_head.weight.device
    caches, logits = {}, {}
    for fold, step_mode in ((False, "eager"), (True, mode)):
        torch._dynamo.reset()
        model.set_kv_cache(B, 64)
        sampler = Sampler(SamplingParams(temperature=0.0), model.config.vocab_size, B, device)
        fold_for_decode(model) if fold else unfold(model)
        step = DecodeStep(model, sampler, step_mode)
        prefill(model, prompts, sampler)
        for i in range(T - 1):
            step(tokens[:, i : i + 1], start + i)
        caches[fold] = torch.cat([b.float().flatten() for block in model.transformer.h for b in block.attn.kv_cache.buffers()])
        with torch.inference_mode():
            logits[fold] = model(tokens[:, T - 1 : T], start + T - 1)[:, -1].float()
    return caches, logits


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["eager", "cuda_graph", "compile", "compile+cuda_graph"])
@pytest.mark.parametrize("name, overrides, batch", [
    ("debug", {}, 2),
    ("debug-mla", {}, 2),  # rope width 8: the torch attention path
    ("debug-mla", KERNEL_MLA, 2),  # the fused MLA step, per-row positions
    ("debug-mla", KERNEL_MLA, 1),  # the fused MLA step between GEMVs with fused norm and GELU
])
def test_folded_decode_step_on_cuda_matches_unfolded(mode, name, overrides, batch):
    """bf16 with the Triton kernels: 12 steps of each decode mode over folded weights leave the KV caches and give
    the logits that the unfolded eager step does (to bf16 rounding), fed the same tokens."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    config = Config.from_name(name, block_size=128, **overrides)
    model = randomize(GPT(config)).to(device=device, dtype=torch.bfloat16).eval()
    prompts = [torch.arange(5, 14), torch.arange(3, 8)][:batch]
    tokens = torch.randint(0, config.vocab_size, (batch, 13), device=device)
    start = torch.tensor([[9], [5]][:batch], device=device)  # each row's next position after its prompt
    caches, logits = unfolded_eager_and_folded_steps(model, prompts, tokens, start, mode)
    for results in (caches, logits):
        assert ((results[True] - results[False]).norm() / results[False].norm()).item() < 3e-2
    assert caches[False].abs().max().item() > 0.1


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_block_folded_step_equals_its_forward(case, absorption):
    """One block, one cached token: `Block.folded_step` on the folded maps == `Block.forward` on its modules (float64),
    and the cache holds the same after either."""
    from litgpt.attention import AttentionInputs
    from litgpt.fold import fold_block

    torch.manual_seed(1)
    config = Config.from_name("debug", block_size=64, **FOLD_CASES[case])
    model = randomize(GPT(config)).to(torch.float64).eval()
    block = model.transformer.h[0]
    x = torch.randn(2, 1, config.n_embd, dtype=torch.float64)
    input_pos = torch.tensor([[3], [6]])
    ctx = AttentionInputs(model.cos[input_pos], model.sin[input_pos], input_pos)
    outputs, caches = [], []
    with torch.no_grad():
        for folded in (None, fold_block(block)):
            block.attn.kv_cache = block.attn.build_kv_cache(2, 8, None, torch.float64)
            block.folded = folded
            outputs.append(block(x, ctx))
            caches.append(torch.cat([b.flatten() for b in block.attn.kv_cache.buffers()]))
    assert block.folded is not None and outputs[0].abs().max() > 1e-2
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(caches[1], caches[0], rtol=1e-9, atol=1e-9)


def test_mla_folds_w_uk_and_w_uv_only_where_the_maps_stay_small():
    """By the parameter count: pythia-160m-mla's folded maps add 3.1M a layer (folded); DeepSeek-V2-Lite's 23M and
    DeepSeek-V3's output map 344M (W_UK and W_UV applied in the step, the maps as trained)."""
    from litgpt.attention import ABSORB_EXTRA_PARAMS, MultiheadLatentAttention
    from litgpt.fold import fold_block

    decisions = {}
    for name in ("pythia-160m-mla", "DeepSeek-V2-Lite", "DeepSeek-V3", "debug-mla"):
        with torch.device("meta"):
            decisions[name] = MultiheadLatentAttention(Config.from_name(name)).folds_absorption()
    assert decisions == {"pythia-160m-mla": True, "DeepSeek-V2-Lite": False, "DeepSeek-V3": False, "debug-mla": True}
    lite = Config.from_name("DeepSeek-V2-Lite")
    d, h, C = lite.mla, lite.n_head, lite.n_embd
    extra = (h * (d.kv_lora_rank + d.qk_rope_head_dim) * C - h * d.qk_head_dim * C - h * d.qk_nope_head_dim * d.kv_lora_rank
             + h * d.kv_lora_rank * C - h * d.v_head_dim * C - h * d.v_head_dim * d.kv_lora_rank)
    assert extra == 23_068_672 > ABSORB_EXTRA_PARAMS
    # a V2-Lite layer (on the meta device): the maps are the modules' own
    with torch.device("meta"):
        model = GPT(Config.from_name("DeepSeek-V2-Lite", n_layer=2))
    attn = model.transformer.h[0].attn
    assert not attn.folds_absorption()
    query_and_kv_a, out = attn.decode_projections()
    assert query_and_kv_a[0].shape == (h * d.qk_head_dim + d.kv_lora_rank + d.qk_rope_head_dim, C)
    assert out[0].shape == (C, h * d.v_head_dim)
