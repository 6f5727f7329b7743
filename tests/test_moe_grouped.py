"""litgpt/kernels/moe_grouped.py: the counting sort of token-expert pairs by expert, the grouped experts' torch
reference against a per-expert loop (float64), the Triton kernels against the reference under the Triton interpreter
(CPU) and on CUDA, and a decode step of a small DeepSeek-MoE model as one static graph equal to the full forward."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from litgpt.kernels.moe_grouped import MAX_SLOTS, grouped_experts, grouped_experts_reference, sort_slots_by_expert
from litgpt.moe import Experts, moe_layers

from test_kernels import interpreted_copy, interpreter_gate, route_to_interpreted
from test_model import MLA_DIMS
from test_moe import SCORINGS, moe_config, randomized


def routing(N: int, k: int, E: int, used: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights (N, k) and distinct expert indices per token (N, k) among experts 0..used-1 (the others get
    no tokens; with N * k > used, experts repeat across tokens)."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randperm(used, generator=generator)[:k] for _ in range(N)])  # (N, k)
    weights = torch.rand(N, k, generator=generator, dtype=torch.float64)
    return weights, indices


def expert_tensors(E: int, C: int, I: int, bias: bool, dtype: torch.dtype, seed: int, device: str = "cpu"):
    """fc_weight (E, 2I, C), proj_weight (E, C, I) and, with bias, their biases (E, 2I), (E, C) (else None)."""
    generator = torch.Generator(device).manual_seed(seed)
    wide = dict(generator=generator, dtype=torch.float32 if device == "cuda" else torch.float64, device=device)
    fc = torch.randn(E, 2 * I, C, **wide) / C**0.5
    proj = torch.randn(E, C, I, **wide) / I**0.5
    fc_bias = torch.randn(E, 2 * I, **wide) if bias else None
    proj_bias = torch.randn(E, C, **wide) if bias else None
    return tuple(None if t is None else t.to(dtype) for t in (fc, proj, fc_bias, proj_bias))


def per_expert_loop(x, fc, proj, fc_bias, proj_bias, weights, indices) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * proj_e(swiglu(fc_e(x[t]))), one expert at a time over the tokens that chose it."""
    y = torch.zeros_like(x)
    for e in range(fc.size(0)):
        tokens, choice = (indices == e).nonzero(as_tuple=True)  # (n_e,), (n_e,)
        if tokens.numel() == 0:
            continue
        gate, up = F.linear(x[tokens], fc[e], None if fc_bias is None else fc_bias[e]).chunk(2, dim=-1)
        out = F.linear(F.silu(gate) * up, proj[e], None if proj_bias is None else proj_bias[e])  # (n_e, C)
        y.index_add_(0, tokens, weights[tokens, choice].to(x.dtype)[:, None] * out)
    return y


def test_sort_slots_by_expert_is_a_stable_sort_with_counts():
    _, indices = routing(N=9, k=3, E=8, used=5, seed=0)
    order, counts = sort_slots_by_expert(indices, n_expert=8)
    flat = indices.flatten()
    assert torch.equal(order, flat.argsort(stable=True))
    assert torch.equal(counts, torch.bincount(flat, minlength=8))
    assert counts[5:].sum() == 0 and counts.sum() == 27 and (counts[:5] > 1).all()  # empty and repeated experts


# (N tokens, k, E experts, experts in use, C, I, bias): decode (1 and a few tokens) and prefill-sized inputs
REFERENCE_CASES = [
    (1, 2, 8, 8, 24, 20, False),
    (4, 3, 8, 5, 24, 20, True),  # repeated experts; experts 5..7 get no tokens
    (64, 2, 8, 6, 32, 16, True),  # prefill-sized: every used expert has many tokens
    (37, 4, 16, 9, 16, 40, False),
]


@pytest.mark.parametrize("N, k, E, used, C, I, bias", REFERENCE_CASES)
def test_reference_equals_the_per_expert_loop(N, k, E, used, C, I, bias):
    weights, indices = routing(N, k, E, used, seed=N + E)
    fc, proj, fc_bias, proj_bias = expert_tensors(E, C, I, bias, torch.float64, seed=k)
    x = torch.randn(N, C, dtype=torch.float64)
    got = grouped_experts_reference(x, fc, proj, fc_bias, proj_bias, weights, indices)
    want = per_expert_loop(x, fc, proj, fc_bias, proj_bias, weights, indices)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # the module's "sorted" path is this function; on the CPU it is the reference
    assert torch.equal(grouped_experts(x, fc, proj, fc_bias, proj_bias, weights, indices), got)


def test_reference_gradients_equal_the_per_expert_loop():
    weights, indices = routing(N=6, k=2, E=8, used=4, seed=1)
    tensors = [t.requires_grad_() for t in expert_tensors(8, 16, 12, True, torch.float64, seed=2)]
    x = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    grads = []
    for function in (grouped_experts_reference, per_expert_loop):
        y = function(x, *tensors, weights, indices)
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [x, *tensors]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- the Triton kernels under the interpreter (CPU)
@pytest.fixture(scope="module")
def interpreted_moe():
    return interpreted_copy("triton_moe")


@pytest.fixture
def interpreted(interpreted_moe, monkeypatch):
    """Route `grouped_experts`'s kernel path (`litgpt::moe_experts`) to the interpreted kernels on CPU tensors, with
    one tile config (without a GPU the autotuner cannot time the others); returns the list of launches."""
    import triton

    config = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16})]  # several tiles over C and I at these widths
    for kernel in (interpreted_moe._gate_up_kernel, interpreted_moe._down_kernel):
        monkeypatch.setattr(kernel, "configs", config)

    def gate(x, fc, proj, fc_bias, proj_bias, slots):
        return slots <= MAX_SLOTS and interpreter_gate(tuple(t for t in (x, fc, proj, fc_bias, proj_bias)
                                                             if t is not None))

    return route_to_interpreted(monkeypatch, interpreted_moe, "triton_moe",
                                importlib.import_module("litgpt.kernels.moe_grouped"), "_moe_experts_op", gate)


# (N, k, E, used, C, I, bias, dtype): one token; a few; an expert with more than BLOCK_M (16) slots; widths that
# end inside a tile
KERNEL_CASES = [
    (1, 2, 8, 8, 32, 48, False, torch.float32),
    (5, 2, 8, 5, 32, 48, True, torch.float32),
    (24, 2, 4, 3, 48, 40, True, torch.float16),
    (6, 3, 8, 8, 40, 24, False, torch.float16),
]


@pytest.mark.parametrize("N, k, E, used, C, I, bias, dtype", KERNEL_CASES)
def test_kernels_match_the_reference_interpreted(interpreted, N, k, E, used, C, I, bias, dtype):
    """float32 to 1e-5; float16 (bf16's tl.dot is wrong in Triton's interpreter) within a few of its roundings of
    the float64 result on the same inputs. The output is the kernel's: the reference never runs."""
    weights, indices = routing(N, k, E, used, seed=N * k)
    fc, proj, fc_bias, proj_bias = expert_tensors(E, C, I, bias, dtype, seed=C)
    x = torch.randn(N, C).to(dtype)
    got = grouped_experts(x, fc, proj, fc_bias, proj_bias, weights.float(), indices)
    assert interpreted == ["_moe_experts_op"] and got.dtype == dtype and got.shape == (N, C)
    wide = [None if t is None else t.double() for t in (x, fc, proj, fc_bias, proj_bias)]
    want = per_expert_loop(*wide, weights.float().double(), indices)
    tolerance = 1e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------- the fused router under the interpreter (CPU)
@pytest.fixture
def interpreted_router(interpreted_moe, monkeypatch):
    """Route `Router.forward`'s fused path (`litgpt::moe_route`) to the interpreted kernel on CPU tensors; returns
    the list of launches."""
    import litgpt.moe

    def gate(x, weight, bias):
        return x.size(0) <= 256 and interpreter_gate((x, weight))

    return route_to_interpreted(monkeypatch, interpreted_moe, "triton_moe", litgpt.moe, "fused_route", gate,
                                gate_name="route_kernel_applies")


@pytest.mark.parametrize("scoring", ["v2-greedy", "v3-no-groups", "mixtral", "v2-groups"])
@pytest.mark.parametrize("N, E, k, C", [(1, 8, 2, 32), (5, 6, 3, 48), (64, 64, 6, 160)])  # 160: 2 tiles of 128
def test_the_fused_router_equals_the_torch_router_interpreted(interpreted_router, scoring, N, E, k, C):
    """Weights to 1e-6 and the same experts in the same order (best first), for softmax, sigmoid with V3's bias,
    normalised and scaled, and topk_softmax; an expert count that is not a power of 2 and widths that end inside a
    tile. Group-limited routing keeps the torch path (its groups are not in the kernel)."""
    overrides = dict(SCORINGS[scoring], n_embd=C, n_expert=E, n_expert_per_token=k)
    if "n_expert_groups" in overrides:
        overrides["n_expert_groups"] = 2
        overrides["n_topk_groups"] = 1
    layer = moe_layers(randomized(moe_config(**overrides)))[0]
    router = layer.gate
    if scoring == "v3-no-groups":  # normalised and scaled too
        router.config.norm_topk_prob, router.config.routed_scaling_factor = True, 2.5
    x = torch.randn(N, C)
    with torch.no_grad():
        weights, indices, probs = router.eval()(x)
        want_weights, want_indices, want_probs = router.train()(x)
    if scoring == "v2-groups":
        assert interpreted_router == [] and probs is not None
        return
    assert interpreted_router == ["fused_route"] and probs is None and want_probs.shape == (N, E)
    assert weights.dtype == torch.float32 and indices.dtype == torch.int64
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(weights, want_weights.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("scoring", ["v2-greedy", "v3-no-groups", "mixtral"])
def test_the_fused_router_equals_the_torch_router_on_cuda_at_deepseek_v2_lite_widths(scoring):
    """bf16 inputs, 64 experts of 2,048 inputs, top 6, 1 and 64 tokens: the same experts as the torch router (float32
    logits both) except where its k-th and next scores tie to 1e-5, and weights to 1e-5."""
    layer = moe_layers(randomized(moe_config(**SCORINGS[scoring], n_embd=2048, n_head=16, n_expert=64,
                                             n_expert_per_token=6, moe_intermediate_size=64)))[0]
    router = layer.gate.cuda().bfloat16()
    for N in (1, 64):
        x = torch.randn(N, 2048, device="cuda").bfloat16()
        with torch.no_grad():
            weights, indices, probs = router.eval()(x)
            want_weights, want_indices, _ = router.train()(x)
            scores = F.linear(x.float(), router.weight.float())
            scores = scores.sigmoid() + router.e_score_correction_bias if scoring == "v3-no-groups" else scores
        assert probs is None
        top = scores.topk(7, dim=-1).values  # (N, 7)
        tied = (top[:, 5] - top[:, 6]).abs() < 1e-5
        same = (indices == want_indices).all(dim=-1)
        assert bool((same | tied).all())
        torch.testing.assert_close(weights[same], want_weights[same].float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- a decode step as one static graph
def test_decode_step_is_one_static_graph_equal_to_the_full_forward():
    """A small DeepSeek-MoE model (MLA, a dense first layer, shared experts, V2 group-limited routing), float64:
    prefill, then decode steps through `torch.compile(fullgraph=True, dynamic=False)`, which fails on any graph
    break (a host read such as the per-expert loop's counts), equal the full forward's logits."""
    torch.manual_seed(0)
    config = moe_config(n_layer=3, first_k_dense_replace=1, n_shared_expert=2, latent_attention=MLA_DIMS,
                        parallel_residual=False, norm_class_name="RMSNorm", **SCORINGS["v2-groups"])
    model = randomized(config, torch.float64)
    idx = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=3, max_seq_length=16)
        outs = [model(idx[:, :6], input_pos=torch.arange(6))]
        torch._dynamo.reset()
        step = torch.compile(model, fullgraph=True, dynamic=False, backend="eager")
        paths = []
        for layer in moe_layers(model):
            choose = layer.experts.choose_path
            layer.experts.choose_path = lambda x, slots, _choose=choose: paths.append(_choose(x, slots)) or paths[-1]
        outs += [step(idx[:, t : t + 1], input_pos=torch.full((3, 1), t)) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-9)
    assert set(paths) == {"sorted"}  # 3 tokens x 2 experts: the decode path, traced once per layer


# ---------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("N, bias", [(1, False), (8, False), (32, False), (8, True)])
def test_kernels_match_the_reference_on_cuda_at_deepseek_v2_lite_widths(N, bias, monkeypatch):
    """bf16 at DeepSeek-V2-Lite's widths (64 experts, 6 a token, C 2048, I 1408) against the float64 loop on the
    same bf16 inputs: within bf16's precision of the output, and the kernels ran (not the reference)."""
    from litgpt.kernels.moe_grouped import kernel_applies

    E, k, C, I = 64, 6, 2048, 1408
    weights, indices = routing(N, k, E, E, seed=N)
    fc, proj, fc_bias, proj_bias = expert_tensors(E, C, I, bias, torch.bfloat16, seed=N, device="cuda")
    x = torch.randn(N, C, device="cuda").bfloat16()
    weights, indices = weights.float().cuda(), indices.cuda()
    assert kernel_applies(x, fc, proj, fc_bias, proj_bias, N * k)
    entry = importlib.import_module("litgpt.kernels.moe_grouped")
    monkeypatch.setattr(entry, "grouped_experts_reference", lambda *args: pytest.fail("the reference ran"))
    got = grouped_experts(x, fc, proj, fc_bias, proj_bias, weights, indices)
    wide = [None if t is None else t.double() for t in (x, fc, proj, fc_bias, proj_bias)]
    want = per_expert_loop(*wide, weights.double(), indices)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.cuda
def test_kernels_replay_in_a_cuda_graph_with_new_routing():
    """Captured once, the two launches follow routing written into the captured input tensors afterwards."""
    E, k, C, I, N = 16, 4, 256, 128, 8
    fc, proj, _, _ = expert_tensors(E, C, I, False, torch.bfloat16, seed=0, device="cuda")
    x = torch.randn(N, C, device="cuda").bfloat16()
    weights, indices = (t.cuda() for t in routing(N, k, E, E, seed=0))
    weights = weights.float()
    grouped_experts(x, fc, proj, None, None, weights, indices)  # autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = grouped_experts(x, fc, proj, None, None, weights, indices)
    for seed in (1, 2):
        new_weights, new_indices = routing(N, k, E, 5, seed=seed)  # experts 5.. get nothing now
        weights.copy_(new_weights), indices.copy_(new_indices)
        graph.replay()
        want = grouped_experts_reference(x.double(), fc.double(), proj.double(), None, None, weights.double(), indices)
        assert ((y.double() - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.cuda
def test_experts_module_takes_the_kernels_at_decode_sizes():
    config = moe_config(n_embd=64, moe_intermediate_size=32)
    experts = Experts(config).cuda().bfloat16()
    x = torch.randn(64, 64, device="cuda").bfloat16()
    with torch.no_grad():
        assert experts.choose_path(x[:4], slots=8) == "sorted"
        assert experts.choose_path(x, slots=MAX_SLOTS) == "sorted"  # past n_expert: the kernels still take it
        assert experts.choose_path(x, slots=MAX_SLOTS + 1) != "sorted"
