"""litgpt/moe.py: routing scorings against a per-token reference, the expert paths against each other, load balancing
(the V3 bias update, the aux losses, the training step), upstream litgpt's state-dict keys, cached and folded decode
of MoE models, and one-line errors for bad MoE configs."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from litgpt import GPT, Config
from litgpt.checkpoint import load_checkpoint
from litgpt.fold import fold_for_decode
from litgpt.model import init_weights
from litgpt.moe import ExpertBalance, Experts, Router, expert_load_metrics, moe_layers

from test_model import MLA_DIMS, randomize

MOE = dict(mlp_class_name="LLaMAMoE", intermediate_size=48, moe_intermediate_size=16, n_expert=8,
           n_expert_per_token=2)
SCORINGS = {
    "v2-greedy": dict(moe_scoring="softmax"),
    "v2-groups": dict(moe_scoring="softmax", n_expert_groups=4, n_topk_groups=2, norm_topk_prob=True,
                      routed_scaling_factor=1.5),
    "v3-groups-bias": dict(moe_scoring="sigmoid", n_expert_groups=4, n_topk_groups=2, norm_topk_prob=True,
                           routed_scaling_factor=2.5),
    "v3-no-groups": dict(moe_scoring="sigmoid"),
    "mixtral": dict(moe_scoring="topk_softmax"),
}


def moe_config(**overrides) -> Config:
    fields = dict(block_size=64, n_layer=2, n_embd=32, n_head=4, vocab_size=100, padding_multiple=64, **MOE)
    return Config.from_name("debug", **{**fields, **overrides})


def randomized(config: Config, dtype: torch.dtype = torch.float32) -> GPT:
    """Random weights everywhere, and a random V3 bias so that it changes the choice."""
    model = randomize(GPT(config))
    for layer in moe_layers(model):
        if layer.gate.e_score_correction_bias is not None:
            layer.gate.e_score_correction_bias.copy_(torch.randn(config.n_expert) * 0.3)
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------------------- routing and experts
def reference_routing(config: Config, router: Router, x: torch.Tensor) -> tuple[list[list[int]], list[list[float]]]:
    """Each token's chosen experts (sorted) and their weights, token by token in float64 from the definitions."""
    c = config
    chosen, weights = [], []
    for row in x.double():
        logits = router.weight.double() @ row  # (E,)
        if c.moe_scoring == "topk_softmax":
            top = logits.topk(c.n_expert_per_token)
            picks, w = top.indices.tolist(), top.values.softmax(-1).tolist()
        else:
            scores = logits.softmax(-1) if c.moe_scoring == "softmax" else logits.sigmoid()
            choice = scores.clone()
            if router.e_score_correction_bias is not None:
                choice = choice + router.e_score_correction_bias.double()
            allowed = list(range(c.n_expert))
            if c.n_expert_groups:
                size = c.n_expert // c.n_expert_groups
                group_score = [sorted(choice[g * size:(g + 1) * size].tolist())[-c.n_topk_scores_per_group:]
                               for g in range(c.n_expert_groups)]
                best = sorted(range(c.n_expert_groups), key=lambda g: -sum(group_score[g]))[: c.n_topk_groups]
                allowed = [e for e in allowed if e // size in best]
            picks = sorted(allowed, key=lambda e: -choice[e].item())[: c.n_expert_per_token]
            w = [scores[e].item() for e in picks]
            if c.norm_topk_prob:
                w = [v / sum(w) for v in w]
        w = [v * c.routed_scaling_factor for v in w]
        order = sorted(range(len(picks)), key=lambda j: picks[j])
        chosen.append([picks[j] for j in order])
        weights.append([w[j] for j in order])
    return chosen, weights


@pytest.mark.parametrize("case", sorted(SCORINGS))
def test_router_matches_a_per_token_reference(case):
    config = moe_config(**SCORINGS[case])
    router = randomized(config).transformer.h[1].mlp.gate
    x = torch.randn(40, config.n_embd)
    with torch.no_grad():
        weights, indices, probs = router(x)
    order = indices.argsort(dim=-1)
    expected_chosen, expected_weights = reference_routing(config, router, x)
    assert indices.gather(-1, order).tolist() == expected_chosen
    torch.testing.assert_close(weights.gather(-1, order).double(), torch.tensor(expected_weights, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(40))  # what the aux losses weigh: a distribution


def test_group_limit_and_bias_change_the_choice_not_the_weights():
    """Two groups of two: the greedy pick (experts 0 and 2) becomes the best group's pair once routing is
    group-limited; a bias on expert 1 makes V3 choose it over 2, at its unbiased sigmoid weight."""
    config = moe_config(n_expert=4, moe_scoring="sigmoid", n_expert_groups=2, n_topk_groups=1)
    router = Router(config)
    x = torch.zeros(1, config.n_embd)
    x[0, 0] = 1.0
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, 0] = torch.tensor([3.0, -2.0, 2.5, 2.4])  # logits: group 0 = {3, -2}, group 1 = {2.5, 2.4}
        _, indices, _ = router(x)
        assert sorted(indices[0].tolist()) == [2, 3]  # group 1 sums 4.9 > group 0's 1.0 (top-2 sums of sigmoid)
        router.e_score_correction_bias.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))  # now group 0 wins
        weights, indices, _ = router(x)
    assert sorted(indices[0].tolist()) == [0, 1]
    assert sorted(weights[0].tolist()) == pytest.approx(sorted(torch.tensor([3.0, -2.0]).sigmoid().tolist()))


@pytest.mark.parametrize("bias", [False, True])
def test_grouped_gemm_and_sorted_paths_equal_the_per_expert_loop(bias):
    """Outputs and gradients of the three expert paths agree (float32; the grouped path is torch._grouped_mm on
    the CPU), with tokens that skip some experts entirely."""
    torch.manual_seed(0)
    config = moe_config(bias=bias, moe_scoring="softmax")
    experts = Experts(config)
    x = torch.randn(13, config.n_embd)
    indices = torch.randint(0, 5, (13, 2))  # experts 5..7 get no tokens
    indices[:, 1] = (indices[:, 0] + 1 + torch.randint(0, 4, (13,))) % 8
    weights = torch.rand(13, 2)
    results = {}
    for path in ("loop", "grouped", "sorted"):
        experts.path = path
        experts.zero_grad()
        x_in = x.clone().requires_grad_()
        y = experts(x_in, weights, indices)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[path] = (y.detach(), x_in.grad, experts.fc_weight.grad.clone(), experts.proj_weight.grad.clone())
        if bias:
            results[path] += (experts.fc_bias.grad.clone(), experts.proj_bias.grad.clone())
    for path in ("grouped", "sorted"):
        for got, want in zip(results[path], results["loop"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert results["loop"][0].abs().max() > 1e-2
    experts.path = "nope"
    with pytest.raises(ValueError, match="Experts.path must be one of"):
        experts(x, weights, indices)


def test_path_choice():
    experts = Experts(moe_config())
    x = torch.randn(4, 32)
    assert experts.choose_path(x, slots=8) == "sorted"  # decode-sized: no more slots than experts
    assert experts.choose_path(x, slots=9) == "grouped"  # torch._grouped_mm on the CPU in float32
    assert experts.choose_path(x.double(), slots=9) == "loop"


@pytest.mark.parametrize("case", ["v3-groups-bias", "mixtral"])
def test_moe_layer_equals_a_per_token_sum_of_experts(case):
    config = moe_config(n_shared_expert=2, bias=True, **SCORINGS[case])
    layer = randomized(config, torch.float64).transformer.h[1].mlp
    x = torch.randn(2, 5, config.n_embd, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        chosen, weights = reference_routing(config, layer.gate, x.view(10, -1))
        expected = []
        for row, experts, ws in zip(x.view(10, -1), chosen, weights):
            out = layer.shared_experts(row)
            for e, w in zip(experts, ws):
                e_fc, e_proj = layer.experts.fc_weight[e], layer.experts.proj_weight[e]
                h = e_fc @ row + layer.experts.fc_bias[e]
                a, b = h.chunk(2)
                out = out + w * (e_proj @ (F.silu(a) * b) + layer.experts.proj_bias[e])
            expected.append(out)
    torch.testing.assert_close(y.view(10, -1), torch.stack(expected), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------- load balancing
def skewed_router_load(rate: float, steps: int = 150) -> tuple[list[float], torch.Tensor]:
    """Max violation (max load / mean load - 1) per step of a router skewed toward experts 0 and 1, fed fresh
    tokens, with DeepSeek-V3's bias update at `rate` as the only change between steps; and the final bias."""
    torch.manual_seed(0)
    config = moe_config(moe_scoring="sigmoid", moe_bias_update_rate=rate)
    layer = GPT(config).transformer.h[1].mlp.train()
    with torch.no_grad():
        layer.gate.weight.normal_(0, 0.3)
        layer.gate.weight[:2] += 0.15  # experts 0 and 1 score higher for inputs with a positive mean
    tokens_from = torch.Generator().manual_seed(1)
    violations = []
    for _ in range(steps):
        balance = ExpertBalance(layer)
        with torch.no_grad():
            layer(torch.randn(4, 64, config.n_embd, generator=tokens_from) * 0.5 + 0.5)
        balance.take_aux_loss()
        load = balance.tokens[0].clone()
        balance.end_step(lambda t: t)
        violations.append((load.max() / load.mean() - 1).item())
    return violations, layer.gate.e_score_correction_bias


def test_bias_update_moves_load_toward_balance():
    """The auxiliary-loss-free update alone takes a skewed router from max violation ~2.2 to ~0.2; without it the
    load stays skewed."""
    violations, bias = skewed_router_load(rate=0.01)
    assert violations[0] > 2.0
    assert sum(violations[-10:]) / 10 < 0.35 and max(violations[-10:]) < 0.6
    assert bias[:2].max() < 0 < bias[2:].max()  # the favoured experts pushed down, others up
    assert bias.dtype == torch.float32
    fixed, bias = skewed_router_load(rate=0.0)
    assert min(fixed[-10:]) > 1.5 and not bias.any()


def test_aux_losses_and_their_gradient():
    """Switch and sequence-wise aux losses: weight * sum f_i P_i, 1 (times the weight) at perfect balance."""
    torch.manual_seed(0)
    for kind in ("switch", "sequence"):
        config = moe_config(moe_scoring="softmax", moe_aux_loss=kind, moe_aux_loss_weight=0.5)
        layer = GPT(config).transformer.h[1].mlp.train()
        with torch.no_grad():
            layer.gate.weight.zero_()  # uniform probabilities: P_i = 1/E whatever the choice
        layer(torch.randn(2, 8, config.n_embd))
        assert layer.record.aux_loss.item() == pytest.approx(0.5)  # sum_i f_i / E = 1: f sums to E
        assert layer.record.tokens_per_expert.sum().item() == 2 * 8 * 2
        layer.gate.weight.data.normal_()
        layer(torch.randn(2, 8, config.n_embd))
        layer.record.aux_loss.backward()
        assert layer.gate.weight.grad.abs().sum() > 0
    layer.eval()
    layer(torch.randn(2, 8, config.n_embd))
    assert layer.record is None  # nothing is recorded outside training


def test_train_step_adds_the_aux_loss_balances_and_logs_the_load():
    import lightning as L

    from litgpt.training import next_token_loss, train_step

    fabric = L.Fabric(devices=1, accelerator="cpu", precision="32-true")
    torch.manual_seed(0)
    config = moe_config(n_layer=3, first_k_dense_replace=1, moe_scoring="sigmoid", moe_bias_update_rate=0.01,
                        moe_aux_loss="sequence", moe_aux_loss_weight=0.1)
    model = GPT(config)
    init_weights(model)
    batches = [torch.randint(0, 100, (2, 9)) for _ in range(2)]
    copy = GPT(config)
    copy.load_state_dict(model.state_dict())
    copy.train()
    router = copy.transformer.h[1].mlp.gate.weight  # the first MoE layer's: the LM loss and both aux losses reach it
    expected_router_grad, expected_loss, aux_grad = 0, 0.0, 0
    for batch in batches:
        loss = next_token_loss(copy, batch)
        aux = sum(layer.record.aux_loss for layer in moe_layers(copy))
        expected_loss += loss.item()
        aux_grad = aux_grad + torch.autograd.grad(aux / 2, router, retain_graph=True)[0]
        expected_router_grad = expected_router_grad + torch.autograd.grad((loss + aux) / 2, router)[0]
    router_before = model.transformer.h[1].mlp.gate.weight.detach().clone()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1.0))
    model.train()
    loss_sum = train_step(fabric, model, optimizer, iter(batches), 2, None)
    assert loss_sum.item() == pytest.approx(expected_loss, rel=1e-6)  # the LM loss alone
    layer = moe_layers(model)[0]
    torch.testing.assert_close(layer.gate.weight.detach(), router_before - expected_router_grad, rtol=1e-5, atol=1e-6)
    assert aux_grad.abs().max() > 1e-4  # the aux loss made a difference
    bias = layer.gate.e_score_correction_bias
    assert bias.abs().max().item() == pytest.approx(0.01)  # one update of +-rate (0 where exactly at the mean)
    metrics = expert_load_metrics(model)
    shares = [metrics[f"moe_load_expert_{i}"] for i in range(config.n_expert)]
    assert sum(shares) == pytest.approx(1.0) and metrics["moe_max_violation"] >= 0
    assert metrics["moe_aux_loss"] > 0
    assert all(layer.record is None for layer in moe_layers(model))  # taken by the step
    assert expert_load_metrics(model) == {}  # the window was reset
    assert expert_load_metrics(GPT(Config.from_name("debug"))) == {}  # dense: nothing


def test_routing_bias_stays_float32_when_the_model_is_cast(tmp_path):
    from litgpt.checkpoint import save_checkpoint

    model = GPT(moe_config(moe_scoring="sigmoid"))
    save_checkpoint(model, tmp_path)
    for cast in (model.to(torch.bfloat16), load_checkpoint(tmp_path, dtype=torch.bfloat16)):
        layer = cast.transformer.h[1].mlp
        assert layer.experts.fc_weight.dtype == torch.bfloat16
        assert layer.gate.e_score_correction_bias.dtype == torch.float32
        assert cast(torch.randint(0, 100, (1, 4))).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("attention", ["mha", "mla"])
@pytest.mark.parametrize("residual", ["parallel", "sequential"])
@pytest.mark.parametrize("folded", [False, True])
def test_cached_decode_equals_full_forward(attention, residual, folded):
    """Prefill then one-token steps (the sorted expert path, in folded blocks the attention folded and the MoE
    unfolded) give the full forward's logits (float64), with a dense first layer and shared experts."""
    torch.manual_seed(0)
    overrides = dict(n_layer=3, first_k_dense_replace=1, n_shared_expert=1, **SCORINGS["v3-groups-bias"])
    if attention == "mla":
        overrides["latent_attention"] = MLA_DIMS
    if residual == "sequential":
        overrides.update(parallel_residual=False, norm_class_name="RMSNorm")
    model = randomized(moe_config(**overrides), torch.float64)
    assert [type(b.mlp).__name__ for b in model.transformer.h] == ["LLaMAMLP", "LLaMAMoE", "LLaMAMoE"]
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        full = model(idx)
        if folded:
            fold_for_decode(model)
        model.set_kv_cache(batch_size=2, max_seq_length=16)
        outs = [model(idx[:, :7], input_pos=torch.arange(7))]
        outs += [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-9)


def test_upstream_litgpt_moe_checkpoint_loads(tmp_path):
    """A model_config.yaml with upstream litgpt's MoE fields only (Mixtral style: no groups) and a state dict with
    its LLaMAMoE keys load, and compute upstream's function: softmax over the top-k logits."""
    torch.manual_seed(0)
    fields = dict(name="upstream-moe", block_size=32, n_layer=1, n_embd=16, n_head=2, vocab_size=64,
                  padding_multiple=64, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                  mlp_class_name="LLaMAMoE", intermediate_size=24, n_expert=4, n_expert_per_token=2,
                  rotary_percentage=1.0, rope_adjustments=None, n_shared_expert=None, n_expert_groups=None,
                  moe_intermediate_size=None, routed_scaling_factor=1.0, norm_topk_prob=False,
                  first_k_dense_replace=None, n_topk_groups=None, n_topk_scores_per_group=None)
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(fields))
    config = Config.from_file(tmp_path / "model_config.yaml")
    assert config.moe_scoring == "topk_softmax" and config.moe_intermediate_size == 24
    state = {k: torch.randn_like(v) * 0.3 for k, v in GPT(config).state_dict().items()}
    expert_keys = sorted(k for k in state if ".experts." in k)
    assert expert_keys[:3] == ["transformer.h.0.mlp.experts.0.fc_1.weight", "transformer.h.0.mlp.experts.0.fc_2.weight",
                               "transformer.h.0.mlp.experts.0.proj.weight"]
    assert "transformer.h.0.mlp.gate.weight" in state and len(expert_keys) == 4 * 3
    torch.save(state, tmp_path / "lit_model.pth")
    model = load_checkpoint(tmp_path).eval()
    x = torch.randn(1, 3, 16)
    layer = model.transformer.h[0].mlp
    with torch.no_grad():
        expected = []
        for row in x[0]:
            logits = state["transformer.h.0.mlp.gate.weight"] @ row
            top = logits.topk(2)
            out = 0
            for e, w in zip(top.indices.tolist(), top.values.softmax(-1)):
                g = f"transformer.h.0.mlp.experts.{e}."
                hidden = F.silu(state[g + "fc_1.weight"] @ row) * (state[g + "fc_2.weight"] @ row)
                out = out + w * (state[g + "proj.weight"] @ hidden)
            expected.append(out)
        torch.testing.assert_close(layer(x)[0], torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) == set(state)  # and it saves under the same keys


def test_stacked_experts_save_as_views_and_reload():
    model = GPT(moe_config(bias=True))
    state = model.state_dict()
    fc_1 = state["transformer.h.0.mlp.experts.3.fc_1.weight"]
    stacked = model.transformer.h[0].mlp.experts.fc_weight
    assert fc_1.shape == (16, 32) and fc_1.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()
    other = GPT(moe_config(bias=True))
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    incomplete = {k: v for k, v in state.items() if k != "transformer.h.1.mlp.experts.5.proj.weight"}
    with pytest.raises(RuntimeError, match="experts.5.proj.weight"):
        other.load_state_dict(incomplete)


def test_named_moe_family():
    for name in ("pythia-70m-moe", "pythia-70m-moe-gqa", "pythia-70m-moe-mla"):
        c = Config.from_name(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in GPT(c).parameters())
        assert params > 50e6, name
        assert (c.n_expert, c.n_expert_per_token, c.n_shared_expert, c.moe_layers) == (8, 2, 1, [1, 2, 3, 4, 5])
    assert Config.from_name("pythia-70m-moe-gqa").n_query_groups == 2
    assert Config.from_name("pythia-70m-moe-mla").mla is not None
    assert Config.from_name("debug-moe").moe_layers == [1]


def test_flops_count_the_active_experts():
    from litgpt.flops import matmul_params

    config = moe_config(n_layer=2, first_k_dense_replace=1, n_shared_expert=1, moe_scoring="softmax")
    dense = Config.from_name("debug", block_size=64, n_layer=2, n_embd=32, n_head=4, vocab_size=100,
                             padding_multiple=64, mlp_class_name="LLaMAMLP", intermediate_size=48)
    moe_mlp = 32 * 8 + 3 * 3 * 32 * 16  # router + (2 routed + 1 shared) SwiGLU experts of 16
    assert matmul_params(config) == matmul_params(dense) - 3 * 32 * 48 + moe_mlp


# ---------------------------------------------------------------------------------------- bad configs
BAD = [
    (dict(n_expert_per_token=9), r"n_expert_per_token must be between 1 and n_expert \(8\), got 9"),
    (dict(n_expert_per_token=0), "n_expert_per_token must be between 1 and n_expert"),
    (dict(n_expert=0), "n_expert must be a positive integer"),
    (dict(moe_scoring="softmax", n_expert_groups=3, n_topk_groups=1),
     r"n_expert_groups \(3\) must divide n_expert \(8\)"),
    (dict(moe_scoring="softmax", n_expert_groups=4, n_topk_groups=5),
     "n_topk_groups must be between 1 and n_expert_groups"),
    (dict(moe_scoring="softmax", n_expert_groups=4), "n_topk_groups must be between 1 and n_expert_groups"),
    (dict(n_expert_per_token=4, moe_scoring="softmax", n_expert_groups=4, n_topk_groups=1),
     r"n_topk_groups \(1\) groups of 2 experts hold fewer than n_expert_per_token \(4\)"),
    (dict(moe_scoring="softmax", n_expert_groups=4, n_topk_groups=2, n_topk_scores_per_group=3),
     "n_topk_scores_per_group must be between 1 and the 2 experts of a group"),
    (dict(moe_scoring="topk_softmax", n_expert_groups=4, n_topk_groups=2), "n_expert_groups needs moe_scoring"),
    (dict(n_topk_groups=2), "n_topk_groups=2 needs n_expert_groups"),
    (dict(moe_scoring="softmax", moe_bias_update_rate=0.001), "moe_bias_update_rate=0.001 needs moe_scoring 'sigmoid'"),
    (dict(moe_aux_loss="switch"), r"moe_aux_loss \('switch'\) and moe_aux_loss_weight \(0.0\) go together"),
    (dict(moe_aux_loss_weight=0.1), "moe_aux_loss .None. and moe_aux_loss_weight"),
    (dict(moe_aux_loss="token", moe_aux_loss_weight=0.1), "moe_aux_loss must be one of"),
    (dict(moe_scoring="argmax"), "moe_scoring must be one of"),
    (dict(norm_topk_prob=True), "norm_topk_prob has no effect with moe_scoring 'topk_softmax'"),
    (dict(first_k_dense_replace=2), "leave none of the 2 layers MoE"),
    (dict(moe_layer_freq=0), "moe_layer_freq must be a positive integer"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor must be positive"),
    (dict(mlp_class_name="LLaMAMLP", n_expert=8), "n_expert=8 needs mlp_class_name 'LLaMAMoE'"),
    (dict(intermediate_size=None), "intermediate_size must be set when mlp_class_name is 'LLaMAMoE'"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_moe_configs_are_one_line_errors_naming_the_field(overrides, message):
    fields = {**MOE, **overrides}
    if fields["mlp_class_name"] != "LLaMAMoE":
        fields = {k: v for k, v in fields.items() if k not in ("n_expert_per_token", "moe_intermediate_size")}
    with pytest.raises(ValueError, match=message) as error:
        Config(n_layer=2, n_embd=32, n_head=4, **fields)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["cuda_graph", "compile", "compile+cuda_graph"])
@pytest.mark.parametrize("name, batch", [("debug-moe", 1), ("debug-moe-mla", 1), ("debug-moe-mla", 8)])
def test_captured_decode_step_of_an_moe_model(mode, name, batch):
    """bf16: a captured (or compiled and captured) decode step of an MoE model over folded weights gives the logits
    and caches of the unfolded eager step fed the same tokens (the sorted path's Triton kernels: batch 8 x top-2 is
    more pairs than the 4 experts, at most MAX_SLOTS)."""
    from test_fold import unfolded_eager_and_folded_steps

    torch.manual_seed(0)
    device = torch.device("cuda")
    config = Config.from_name(name, block_size=128, n_embd=64, moe_intermediate_size=32)
    model = randomized(config).to(device=device, dtype=torch.bfloat16)
    prompts = [torch.arange(3 + row, 10 + row) for row in range(batch)]
    tokens = torch.randint(0, config.vocab_size, (batch, 9), device=device)
    start = torch.full((batch, 1), 7, device=device)
    _, logits = unfolded_eager_and_folded_steps(model, prompts, tokens, start, mode)
    assert ((logits[True] - logits[False]).norm() / logits[False].norm()).item() < 3e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_training_forward_and_backward_compile_into_one_graph(device):
    """bf16: an MoE layer's training forward (routing, the grouped GEMMs, its record) compiles with fullgraph=True,
    and its backward runs."""
    torch.manual_seed(0)
    config = Config.from_name("debug-moe", block_size=64)
    layer = GPT(config).transformer.h[1].mlp.to(device=device, dtype=torch.bfloat16).train()
    x = torch.randn(2, 32, config.n_embd, dtype=torch.bfloat16, device=device, requires_grad=True)
    assert layer.experts.choose_path(x.view(64, -1), 64 * 2) == "grouped"
    torch._dynamo.reset()
    y = torch.compile(layer, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")(x)
    aux = ExpertBalance(layer).take_aux_loss()
    (y.float().square().mean() + aux).backward()
    assert torch.isfinite(x.grad).all() and layer.experts.fc_weight.grad is not None
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["debug-moe", "debug-moe-mla"])
def test_compiled_decode_step_keeps_static_shapes(name):
    """The decode step of an MoE model compiles into one graph that serves every position (no recompile), and
    decodes the tokens the eager step does."""
    import torch._dynamo

    from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate

    torch.manual_seed(0)
    model = randomized(Config.from_name(name, block_size=32))
    prompts = [torch.randint(model.config.vocab_size, (6,)), torch.randint(model.config.vocab_size, (4,))]
    rows = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model.set_kv_cache(2, max_seq_length=14)
        sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 2, torch.device("cpu"))
        fold_for_decode(model)
        step = DecodeStep(model, sampler)
        if compiled:
            step.compile(backend="eager", fullgraph=True, dynamic=False)
        with torch._dynamo.config.patch(error_on_recompile=True):
            rows[compiled], _ = generate(model, prompts, 8, sampler, step)
    assert rows[True] == rows[False]
    torch._dynamo.reset()
