"""DeepSeek-style mixture of experts: `LLaMAMoE`, the MLP of the layers that `config.moe_layers` lists.

    y = shared_experts(x) + sum over the chosen experts e of  w_e(x) * expert_e(x)

Routing (`Router`; state dict `gate.weight` and, for V3 scoring, `gate.e_score_correction_bias`), in fp32 or wider:
  softmax       DeepSeek-V2: p = softmax(logits), the top-k of p; weights p of the chosen.
  sigmoid       DeepSeek-V3: s = sigmoid(logits), the top-k of s + e_score_correction_bias (the bias steers the
                choice only); weights s of the chosen.
  topk_softmax  Mixtral / Switch: the top-k of the logits; weights their softmax (upstream litgpt's LLaMAMoE).
With n_expert_groups (softmax, sigmoid), a token chooses only among the experts of its n_topk_groups best groups, a
group scored by the sum of its best n_topk_scores_per_group choice scores. Then norm_topk_prob rescales the k
weights to sum to one, and all are multiplied by routed_scaling_factor.

Experts (`Experts`): the routed SwiGLU experts stacked, [fc_1 | fc_2] as one (E, 2I, C) tensor and proj as (E, C, I),
so a batch of tokens sorted by expert runs one grouped GEMM per projection (`torch._grouped_mm`), without dropping
tokens; a per-expert loop is the reference (and the fallback). Decode-sized inputs take the "sorted" path
(`litgpt.kernels.moe_grouped`): the token-expert pairs grouped by expert on the device and each chosen expert's
weights read in place, once per step (Triton on CUDA), with shapes fixed by the token count, so a decode step with MoE
layers captures as one static graph. The GPT's state dict names the experts as upstream litgpt's LLaMAMoE does,
`experts.{i}.fc_1.weight` etc. (`split_expert_keys`, `stack_expert_keys`).

Load balancing in training (`ExpertBalance`, driven by `litgpt.training.train_step`): in a training forward each
MoE layer records how many tokens chose each expert and, with moe_aux_loss, its auxiliary loss (Switch over the
batch, or DeepSeek-V3's sequence-wise one), times moe_aux_loss_weight. The step adds the aux losses to the loss it
backpropagates; after the optimizer step it sums the counts over data-parallel ranks, moves each V3 bias toward
balance (DeepSeek-V3's auxiliary-loss-free balancing: b_i += moe_bias_update_rate * sign(mean load - load_i), outside
autograd) and adds the counts to the layer's window, which `expert_load_metrics` reports with the progress line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.activations import swiglu
from litgpt.config import Config
from litgpt.kernels.moe_grouped import fused_route, grouped_experts, kernel_applies, route_kernel_applies

EXPERT_PATHS = ("grouped", "loop", "sorted")
_STACKED_KEY = re.compile(r"(.*\.experts\.)(fc|proj)_(weight|bias)")
_EXPERT_KEY = re.compile(r"(.*\.experts\.)(\d+)\.(fc_1|fc_2|proj)\.(weight|bias)")


class Router(nn.Module):
    """Scores the experts for each token and picks n_expert_per_token of them (see the module docstring).

    V3's e_score_correction_bias stays float32 whatever dtype the model is cast to, as DeepSeek keeps it: its
    balancing steps (1e-3) on scores near 1 would vanish in bf16.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_expert, config.n_embd))
        bound = 1 / math.sqrt(config.n_embd)
        nn.init.uniform_(self.weight, -bound, bound)
        bias = torch.zeros(config.n_expert) if config.moe_scoring == "sigmoid" else None
        self.register_buffer("e_score_correction_bias", bias)  # persistent: HF's and upstream's state-dict entry

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "Router":
        old = self.e_score_correction_bias
        super()._apply(fn, recurse)
        new = self.e_score_correction_bias
        if new is not None and new.dtype != torch.float32:  # moved with the module, not rounded through its dtype
            exact = old is not None and not old.is_meta and old.dtype == torch.float32
            self.e_score_correction_bias = (old if exact else new).to(device=new.device, dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """x (N, C) -> routing weights (N, k) in fp32 or wider, expert indices (N, k), and each token's probabilities
        over all experts (N, E) (what the auxiliary losses weigh; for sigmoid scoring the scores normalised to sum to
        one). In eval mode, where the fused router applies (`litgpt.kernels.moe_grouped.route_kernel_applies`:
        decode-sized inputs on CUDA, no expert groups), one launch computes the weights and indices, and the
        probabilities, which only training reads, are None."""
        c = self.config
        if not self.training and not self.limits_groups and route_kernel_applies(x, self.weight,
                                                                                 self.e_score_correction_bias):
            weights, indices = fused_route(x, self.weight, self.e_score_correction_bias, c.n_expert_per_token,
                                           c.moe_scoring, c.norm_topk_prob, c.routed_scaling_factor)
            return weights, indices, None
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.weight.to(dtype))  # (N, E)
        if c.moe_scoring == "topk_softmax":
            top, indices = logits.topk(c.n_expert_per_token, dim=-1)  # (N, k)
            weights, probs = top.softmax(dim=-1), logits.softmax(dim=-1)
        else:
            scores = logits.softmax(dim=-1) if c.moe_scoring == "softmax" else logits.sigmoid()  # (N, E)
            choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
            if self.limits_groups:
                choice = self.limit_to_groups(choice)
            indices = choice.topk(c.n_expert_per_token, dim=-1).indices  # (N, k)
            weights = scores.gather(-1, indices)  # (N, k)
            if c.norm_topk_prob:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
            probs = scores if c.moe_scoring == "softmax" else scores / scores.sum(dim=-1, keepdim=True)
        if c.routed_scaling_factor != 1.0:
            weights = weights * c.routed_scaling_factor
        return weights, indices, probs

    @property
    def limits_groups(self) -> bool:
        """Experts come in groups and a token may choose from only some of them."""
        c = self.config
        return bool(c.n_expert_groups) and c.n_topk_groups < c.n_expert_groups

    def limit_to_groups(self, choice: torch.Tensor) -> torch.Tensor:
        """choice (N, E) with the experts outside each token's n_topk_groups best groups set to -inf."""
        c = self.config
        grouped = choice.view(choice.size(0), c.n_expert_groups, -1)  # (N, G, E/G)
        group_scores = grouped.topk(c.n_topk_scores_per_group, dim=-1).values.sum(dim=-1)  # (N, G)
        best = group_scores.topk(c.n_topk_groups, dim=-1).indices  # (N, n_topk_groups)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)  # (N, G)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view_as(choice)


class Experts(nn.Module):
    """The routed SwiGLU experts, stacked: `fc_weight` (E, 2I, C) = [fc_1; fc_2] per expert, `proj_weight` (E, C, I),
    and with config.bias `fc_bias` (E, 2I), `proj_bias` (E, C).

    Paths, the same function: "grouped" (tokens sorted by expert, one `torch._grouped_mm` per projection), "loop"
    (the reference: one matmul per expert over its tokens; it reads the counts on the host) and "sorted" (the
    token-expert pairs grouped by expert on the device, `litgpt.kernels.moe_grouped.grouped_experts`: on CUDA two
    Triton grouped GEMMs that read each chosen expert's weights in place, gate and up fused with the SwiGLU; static
    shapes). `path` None (default) picks one per call (`choose_path`); a name forces it.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        E, C, I = config.n_expert, config.n_embd, config.moe_intermediate_size
        self.fc_weight = nn.Parameter(torch.empty(E, 2 * I, C))
        self.proj_weight = nn.Parameter(torch.empty(E, C, I))
        self.fc_bias = nn.Parameter(torch.empty(E, 2 * I)) if config.bias else None
        self.proj_bias = nn.Parameter(torch.empty(E, C)) if config.bias else None
        for weight, bias, fan_in in ((self.fc_weight, self.fc_bias, C), (self.proj_weight, self.proj_bias, I)):
            bound = 1 / math.sqrt(fan_in)  # as nn.Linear initialises each expert's maps
            nn.init.uniform_(weight, -bound, bound)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)
        self.path: Optional[str] = None

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (N, C), routing weights and expert indices (N, k) -> the weighted sum of each token's experts (N, C)."""
        N, k = indices.shape
        path = self.path or self.choose_path(x, N * k)
        if path not in EXPERT_PATHS:
            raise ValueError(f"Experts.path must be one of {EXPERT_PATHS} or None, got {path!r}")
        if path == "sorted":
            return grouped_experts(x, self.fc_weight, self.proj_weight, self.fc_bias, self.proj_bias, weights,
                                   indices)  # (N, C)
        flat = indices.flatten()  # (N*k,) slot s is token s // k's (s % k)-th expert
        order = flat.argsort(stable=True)  # slots sorted by expert
        counts = torch.zeros(self.config.n_expert, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))  # (E,) tokens per expert
        # index_select: its backward is index_add_; x[...]'s is index_put's sort-based accumulate
        rows = x.index_select(0, order // k)  # (N*k, C) grouped by expert
        run = self.grouped if path == "grouped" else self.loop
        y_sorted = run(rows, counts, flat[order])  # (N*k, C)
        y = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted).view(N, k, -1)  # (N, k, C), token order
        return (y * weights.unsqueeze(-1)).sum(dim=1).to(x.dtype)  # (N, C), the weighted sum in fp32

    def choose_path(self, x: torch.Tensor, slots: int) -> str:
        """Sorted for decode-sized inputs: up to MAX_SLOTS token-expert pairs where its Triton kernels run, else up
        to one pair per expert (its torch reference gathers each pair's weights); else grouped where
        `torch._grouped_mm` runs; else, while a CUDA graph is being captured, sorted; else the loop."""
        if slots <= self.config.n_expert or kernel_applies(
            x, self.fc_weight, self.proj_weight, self.fc_bias, self.proj_bias, slots
        ):
            return "sorted"
        if self.grouped_mm_applies(x):
            return "grouped"
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return "sorted"
        return "loop"

    def grouped_mm_applies(self, x: torch.Tensor) -> bool:
        """`torch._grouped_mm` takes bf16 on Hopper-or-newer GPUs with 16-byte aligned widths, and float32/bf16 on
        the CPU outside torch.compile (whose shape checks demand bf16)."""
        if not hasattr(torch, "_grouped_mm"):
            return False
        dtype = _compute_dtype(x)
        if x.is_cuda:
            aligned = self.config.n_embd % 8 == 0 and self.config.moe_intermediate_size % 8 == 0
            return dtype == torch.bfloat16 and aligned and grouped_mm_gpu(x.device.index)
        if x.device.type != "cpu":
            return False
        return dtype == torch.bfloat16 or (dtype == torch.float32 and not torch.compiler.is_compiling())

    def grouped(self, rows: torch.Tensor, counts: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """rows (R, C) sorted by expert, counts (E,) per expert, experts (R,) each row's expert -> (R, C): two
        grouped GEMMs."""
        dtype = _compute_dtype(rows)
        offsets = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's rows
        h = torch._grouped_mm(rows.to(dtype), self.fc_weight.to(dtype).transpose(1, 2), offs=offsets)  # (R, 2I)
        if self.fc_bias is not None:
            h = h + _rows_of(self.fc_bias.to(dtype), experts)
        y = torch._grouped_mm(swiglu(h), self.proj_weight.to(dtype).transpose(1, 2), offs=offsets)  # (R, C)
        if self.proj_bias is not None:
            y = y + _rows_of(self.proj_bias.to(dtype), experts)
        return y

    def loop(self, rows: torch.Tensor, counts: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """The reference: as `grouped`, one expert at a time (reads `counts` on the host)."""
        outs = []
        for e, chunk in enumerate(rows.split(counts.tolist())):  # (n_e, C)
            fc_bias = None if self.fc_bias is None else self.fc_bias[e]
            proj_bias = None if self.proj_bias is None else self.proj_bias[e]
            h = F.linear(chunk, self.fc_weight[e], fc_bias)  # (n_e, 2I)
            outs.append(F.linear(swiglu(h), self.proj_weight[e], proj_bias))  # (n_e, C)
        return torch.cat(outs)


def _rows_of(bias: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """bias (E, W), experts (R,) -> each row's expert's bias (R, W). Through `F.embedding`, whose backward sums
    the rows of each expert by a sort and a segment reduction: `bias[experts]`'s backward (index_put's accumulate)
    walks each expert's thousands of duplicate rows serially, and took 80% of an H200 MoE training step."""
    return F.embedding(experts, bias)


@dataclass
class RoutingRecord:
    """What one training forward of an MoE layer routed: tokens per expert (E,) and its weighted aux loss (or None)."""

    tokens_per_expert: torch.Tensor
    aux_loss: Optional[torch.Tensor]


@dataclass
class LoadWindow:
    """An MoE layer's training statistics since the last `expert_load_metrics`, in float32 on the device: tokens
    per expert (E,), the summed aux loss and the optimizer steps (0-d)."""

    tokens: torch.Tensor
    aux: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def zeros(cls, n_expert: int, device: torch.device) -> "LoadWindow":
        return cls(torch.zeros(n_expert, device=device), torch.zeros((), device=device), torch.zeros((), device=device))


class LLaMAMoE(nn.Module):
    """Routed experts chosen per token by `gate`, plus `shared_experts` (an LLaMAMLP n_shared_expert experts wide,
    built by the caller; None without shared experts). Input and output (B, T, C).

    Its training statistics are plain attributes, not buffers: never in the state dict, never broadcast by DDP
    (whose buffer sync would overwrite one rank's counts with another's), created on the device of the first counts.
    """

    def __init__(self, config: Config, shared_experts: Optional[nn.Module]) -> None:
        super().__init__()
        if (shared_experts is None) != (not config.n_shared_expert):
            raise ValueError(f"n_shared_expert={config.n_shared_expert} but shared_experts is {shared_experts!r}")
        self.config = config
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = shared_experts
        self.record: Optional[RoutingRecord] = None  # the last training forward's, taken by `ExpertBalance`
        self.window: Optional[LoadWindow] = None  # since the last `expert_load_metrics`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)
        weights, indices, probs = self.gate(flat)  # (B*T, k), (B*T, k), (B*T, E)
        y = self.experts(flat, weights, indices).view(B, T, C)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        self.record = self.routing_record(indices, probs, B, T) if self.training else None
        return y

    def routing_record(self, indices: torch.Tensor, probs: torch.Tensor, B: int, T: int) -> RoutingRecord:
        """Tokens per expert and the aux loss: weight * sum_i f_i P_i, f_i = E / (k T) * (tokens that chose i) and P_i
        the mean probability of i, over the whole batch ("switch") or per sequence, then averaged ("sequence")."""
        c = self.config
        E, k = c.n_expert, c.n_expert_per_token
        with torch.no_grad():
            chosen = indices.view(B, T * k)
            ones = torch.ones_like(chosen, dtype=torch.float32)
            per_row = torch.zeros(B, E, device=indices.device).scatter_add_(1, chosen, ones)  # (B, E) per sequence
            tokens = per_row.sum(0)  # (E,)
        aux = None
        if c.moe_aux_loss == "switch":
            aux = (tokens * E / (k * B * T) * probs.mean(0)).sum()
        elif c.moe_aux_loss == "sequence":
            aux = (per_row * E / (k * T) * probs.view(B, T, E).mean(1)).sum(-1).mean()
        return RoutingRecord(tokens, None if aux is None else c.moe_aux_loss_weight * aux)

    @torch.no_grad()
    def balance(self, tokens: torch.Tensor) -> None:
        """After an optimizer step: add the step's tokens per expert (E,) (summed over ranks) to the window and move
        the V3 bias toward balance: overloaded experts down, underloaded up, by moe_bias_update_rate."""
        window = self.load_window_on(tokens.device)
        window.tokens += tokens
        window.steps += 1
        rate = self.config.moe_bias_update_rate
        if rate > 0:
            self.gate.e_score_correction_bias += rate * torch.sign(tokens.mean() - tokens)

    def load_window_on(self, device: torch.device) -> LoadWindow:
        if self.window is None:
            self.window = LoadWindow.zeros(self.config.n_expert, device)
        return self.window


def moe_layers(model: nn.Module) -> list[LLaMAMoE]:
    return [m for m in model.modules() if isinstance(m, LLaMAMoE)]


class ExpertBalance:
    """One optimizer step's MoE bookkeeping: `take_aux_loss` after each micro-batch's forward, `end_step` after the
    optimizer step. For a model without MoE layers both do nothing."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = moe_layers(model)
        self.tokens: Optional[torch.Tensor] = None  # (L, E) tokens per expert of this step's micro-batches

    def take_aux_loss(self) -> Optional[torch.Tensor]:
        """The summed aux loss of the forward just run (None when no layer has one); keeps its tokens per expert."""
        if not self.layers:
            return None
        records = [layer.record for layer in self.layers]
        if any(r is None for r in records):
            raise RuntimeError("an MoE layer recorded no routing: run the forward in training mode (model.train())")
        for layer in self.layers:
            layer.record = None
        tokens = torch.stack([r.tokens_per_expert for r in records])  # (L, E)
        self.tokens = tokens if self.tokens is None else self.tokens + tokens
        if records[0].aux_loss is None:  # every layer has the same config: all have one or none
            return None
        losses = torch.stack([r.aux_loss for r in records])  # (L,)
        for layer, loss in zip(self.layers, losses.detach()):
            layer.load_window_on(loss.device).aux += loss
        return losses.sum()

    def end_step(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the step's counts over ranks with `all_reduce` (the same bias update everywhere) and balance."""
        if self.tokens is None:
            return
        tokens = all_reduce(self.tokens)
        for layer, layer_tokens in zip(self.layers, tokens):
            layer.balance(layer_tokens)
        self.tokens = None


@torch.no_grad()
def expert_load_metrics(model: nn.Module) -> dict[str, float]:
    """Per-expert load since the last call, for the training log, and reset: `moe_load_expert_{i}` (expert i's share
    of the routed tokens, averaged over the MoE layers), `moe_max_violation` (max load / mean load - 1, averaged over
    layers; 0 is perfect balance) and, with an aux loss, `moe_aux_loss` (its mean per step). Empty without MoE."""
    layers = moe_layers(model)
    windows = [layer.window for layer in layers]
    if not layers or any(window is None for window in windows):
        return {}
    for layer in layers:
        layer.window = None
    load = torch.stack([window.tokens for window in windows])  # (L, E)
    steps = windows[0].steps
    aux = torch.stack([window.aux for window in windows]).sum()
    share = load / load.sum(-1, keepdim=True).clamp(min=1)  # (L, E)
    violation = (load.max(-1).values / load.mean(-1).clamp(min=1e-9) - 1).mean()
    values = torch.cat((share.mean(0), violation.view(1), (aux / steps.clamp(min=1)).view(1), steps.view(1))).tolist()
    *shares, max_violation, aux_per_step, n_steps = values
    if n_steps == 0:
        return {}
    metrics = {f"moe_load_expert_{i}": v for i, v in enumerate(shares)}
    metrics["moe_max_violation"] = max_violation
    if layers[0].config.moe_aux_loss is not None:
        metrics["moe_aux_loss"] = aux_per_step
    return metrics


# ---------------------------------------------------------------------------------------- state-dict keys
def split_expert_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """A state-dict post hook: each layer's stacked `experts.fc_weight` etc. become upstream litgpt's per-expert
    entries in its order (`experts.{i}.fc_1.weight`, `.fc_1.bias`, `.fc_2.weight`, ..., `.proj.bias`), as views."""
    items = list(state_dict.items())
    state_dict.clear()
    done: set[str] = set()
    for key, value in items:
        match = _STACKED_KEY.fullmatch(key) if key.startswith(prefix) else None
        if match is None:
            state_dict[key] = value
        elif match.group(1) not in done:  # a layer's experts go where its first stacked entry was
            head = match.group(1)
            done.add(head)
            state_dict.update(_per_expert(head, dict(items)))


def _per_expert(head: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Views of the stacked `{head}fc_weight` (E, 2I, C) etc. as per-expert `{head}{i}.fc_1.weight` (I, C) etc."""
    out = {}
    with torch.no_grad():
        for i in range(tensors[f"{head}fc_weight"].size(0)):
            for name in ("fc_1", "fc_2", "proj"):
                for param in ("weight", "bias"):
                    stacked = tensors.get(f"{head}{'proj' if name == 'proj' else 'fc'}_{param}")
                    if stacked is None:
                        continue
                    if name == "proj":
                        out[f"{head}{i}.{name}.{param}"] = stacked[i]
                    else:  # [fc_1; fc_2] rows
                        out[f"{head}{i}.{name}.{param}"] = stacked[i].chunk(2, dim=0)[name == "fc_2"]
    return out


def stack_expert_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
    missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:
    """A load-state-dict pre hook, the inverse of `split_expert_keys`: per-expert entries (ours or upstream litgpt's)
    are stacked into the `Experts` tensors. An incomplete set is an error naming the first missing entry."""
    found: dict[tuple[str, str, str], dict[int, torch.Tensor]] = {}
    for key in state_dict:
        match = _EXPERT_KEY.fullmatch(key) if key.startswith(prefix) else None
        if match is not None:
            head, i, part, param = match.groups()
            found.setdefault((head, part, param), {})[int(i)] = state_dict[key]
    for head, param in sorted({(h, p) for h, _, p in found}):
        fc_1, fc_2, proj = (found.get((head, part, param), {}) for part in ("fc_1", "fc_2", "proj"))
        n = 1 + max(i for parts in (fc_1, fc_2, proj) for i in parts)
        absent = [f"{head}{i}.{name}.{param}" for name, parts in (("fc_1", fc_1), ("fc_2", fc_2), ("proj", proj))
                  for i in range(n) if i not in parts]
        if absent:
            error_msgs.append(f"{absent[0]} is missing: a layer's experts load together")
            continue
        with torch.no_grad():
            state_dict[f"{head}fc_{param}"] = torch.stack([torch.cat((fc_1[i], fc_2[i])) for i in range(n)])
            state_dict[f"{head}proj_{param}"] = torch.stack([proj[i] for i in range(n)])
        for part in ("fc_1", "fc_2", "proj"):
            for i in range(n):
                del state_dict[f"{head}{i}.{part}.{param}"]


def grouped_mm_gpu(device_index: Optional[int]) -> bool:
    """Whether the GPU is Hopper or newer, where `torch._grouped_mm` has its kernels."""
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


# A constant while compiling (no graph break, no guard), as `litgpt.attention.cudnn_attention_preferred` is.
grouped_mm_gpu._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on x run in: autocast's where it is on (bf16-mixed), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
