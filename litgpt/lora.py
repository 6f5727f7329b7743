"""LoRA (Hu et al., 2021): a frozen linear map plus a trainable rank-r update, y = W x + (alpha / r) B A dropout(x).

`apply_lora(model, LoRASpec(...))` turns the linears its flags name into `LoRALinear`s, in place (`TARGET_TABLE`,
also in its docstring, says which). Only the enabled rows of `qkv` and `kv_b_proj` get an update: one `LoRALinear`
over the whole layer whose B covers just those rows.

State dicts keep the plain layout. A `LoRALinear` holds its base as `.linear` (so Lightning's
`BitsandbytesPrecision` can swap that nn.Linear for a quantized one), but its state-dict hooks write and read the
base as `<name>.weight` / `<name>.bias`, beside `<name>.lora_A` (r, in) and `<name>.lora_B` (rows, r): a plain
`lit_model.pth` loads into a LoRA model (`load_base_state_dict`), `lora_state_dict` holds only the LoRA entries (the
`lit_model.pth.lora` file), and after `merge_lora` a model's state dict has exactly the plain model's keys.

Decoding: folded decode (`litgpt.fold.fold_for_decode`) is a snapshot of plain weights, so it refuses a model with an
unmerged update; `DecodeSession`, which owns its model, merges first. Unfolded paths read weights through
`litgpt.projection.linear_map`, which adds the unmerged update.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.attention import CausalSelfAttention, MultiheadLatentAttention
from litgpt.config import Config as BaseConfig
from litgpt.model import GPT as BaseModel
from litgpt.model import GptNeoxMLP, LLaMAMLP
from litgpt.projection import Projection, dense_weight

LORA_KEYS = ("lora_A", "lora_B")  # a LoRALinear's own entries in a state dict
TARGET_TABLE = """\
flag        MHA / GQA / MQA (CausalSelfAttention)   MLA (MultiheadLatentAttention)
query       the Q rows of attn.qkv                  attn.q_proj; with q_lora_rank attn.q_a_proj and attn.q_b_proj
key         the K rows of attn.qkv                  the k_nope rows of attn.kv_b_proj, and attn.kv_a_proj_with_mqa
value       the V rows of attn.qkv                  the v rows of attn.kv_b_proj
projection  attn.proj                               attn.proj; with o_latent_dim attn.o_a_proj and attn.o_b_proj
mlp         mlp.fc, mlp.proj (GptNeoxMLP); mlp.fc_1, mlp.fc_2, mlp.proj (LLaMAMLP)
head        lm_head

qkv rows are [all Q heads | K groups | V groups]; kv_b_proj rows are, per head, [k_nope (d_n) | v (d_v)].
MLA's kv_a_proj_with_mqa makes the latent that keys and values both decompress, so `key` changes what values see."""
TARGETS = ("query", "key", "value", "projection", "mlp", "head")
HPARAM_PREFIX = "lora_"  # hyperparameters.yaml keys: lora_r, lora_alpha, ..., lora_head


@dataclass(frozen=True)
class LoRASpec:
    """Rank, scale, dropout and targets of a LoRA fine-tune (targets: see the table in `litgpt.lora`)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    query: bool = True
    key: bool = False
    value: bool = True
    projection: bool = False
    mlp: bool = False
    head: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA r (lora_r) must be a positive integer, got {self.r!r}; use e.g. 8")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoRA alpha (lora_alpha) must be a positive number, got {self.alpha!r}; use e.g. 2 * r")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout (lora_dropout) must be in [0, 1), got {self.dropout!r}; use e.g. 0.05")
        for name in TARGETS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"lora_{name} must be true or false, got {getattr(self, name)!r}")
        if not any(getattr(self, name) for name in TARGETS):
            raise ValueError(
                "LoRA has no target: set at least one of " + ", ".join(f"lora_{n}" for n in TARGETS) + " to true"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def hyperparameters(self) -> dict[str, Any]:
        """The spec as hyperparameters.yaml writes it: {"lora_r": 8, "lora_alpha": 16, ...}."""
        return {HPARAM_PREFIX + k: v for k, v in asdict(self).items()}

    @classmethod
    def from_hyperparameters(cls, hparams: Mapping[str, Any]) -> "LoRASpec":
        """The spec from hyperparameters.yaml's `lora_*` keys: missing ones take the defaults, an unknown `lora_*` key
        is a ValueError, keys without the prefix are not the spec's and are passed over."""
        names = {f.name for f in fields(cls)}
        given = {k[len(HPARAM_PREFIX) :]: v for k, v in hparams.items() if k.startswith(HPARAM_PREFIX)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(
                f"unknown LoRA hyperparameters {[HPARAM_PREFIX + k for k in unknown]}; expected "
                f"{[HPARAM_PREFIX + n for n in sorted(names)]}"
            )
        return cls(**given)


class LoRALinear(nn.Module):
    """A frozen linear map (`.linear`) plus a trainable rank-r update on some of its output rows:

        y = linear(x) + scaling * (dropout(x) @ A.T @ B.T, written into `rows`)

    A (r, in) is kaiming-uniform and B (len(rows), r) zero, so the update starts at zero; scaling = alpha / r.
    `rows` is None (all rows) or (start, stop) ranges of output rows. After `merge` the update lives in the base
    weight and the module is a plain linear (its state dict then has only the base entries).
    """

    def __init__(
        self, linear: nn.Linear, r: int, alpha: float, dropout: float, rows: Optional[Sequence[tuple[int, int]]] = None
    ) -> None:
        super().__init__()
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.r, self.scaling = r, alpha / r
        self.row_ranges = _normalize_rows(rows, self.out_features)
        n_rows = self.out_features if self.row_ranges is None else sum(b - a for a, b in self.row_ranges)
        weight = linear.weight
        # a quantized base: its compute dtype where set, else the default dtype (the compute dtype inside
        # `fabric.init_module()` with a quantization plugin)
        dtype = weight.dtype if weight.is_floating_point() else (
            getattr(linear, "compute_dtype", None) or torch.get_default_dtype())
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_rows, r, device=weight.device, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        rows_index = None
        if self.row_ranges is not None:
            device = torch.device("cpu") if weight.device.type == "meta" else weight.device
            rows_index = torch.cat([torch.arange(a, b, device=device) for a, b in self.row_ranges])
        self.register_buffer("lora_rows", rows_index, persistent=False)  # (n_rows,) the output rows B writes
        self.merged = False
        self.reset_lora_parameters()
        self.train(linear.training)  # a model in eval mode stays in it (no LoRA dropout)
        self.register_state_dict_post_hook(_save_plain_keys)
        self.register_load_state_dict_pre_hook(_load_plain_keys)
        self.register_load_state_dict_post_hook(_merged_needs_no_lora_keys)

    # the base's attributes, for code that reads a linear's device, dtype or bias (never its weight for computation:
    # that goes through `projection`, see `litgpt.projection.linear_map`)
    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.linear.bias

    def reset_lora_parameters(self) -> None:
        """A as in the LoRA paper's reference code (kaiming-uniform, a = sqrt(5)), B zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def full_B(self) -> torch.Tensor:
        """B scattered into all output rows (out, r), zero outside the enabled rows."""
        if self.lora_rows is None:
            return self.lora_B
        return self.lora_B.new_zeros(self.out_features, self.r).index_copy(0, self.lora_rows, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A (out, in) in float32 or wider: what `merge` adds to the base weight."""
        compute = torch.promote_types(self.lora_A.dtype, torch.float32)
        return self.scaling * (self.full_B().to(compute) @ self.lora_A.to(compute))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # (..., out)
        if self.merged:
            return y
        low = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r)
        return y + (F.linear(low, self.full_B()) * self.scaling).to(y.dtype)  # (..., out)

    def projection(self) -> Projection:
        """The (weight, bias) this module applies: the base weight plus the update while unmerged (no dropout)."""
        weight = dense_weight(self.linear.weight)
        if not self.merged:
            weight = weight + self.delta_weight().to(weight.dtype)  # (out, in)
        return weight, self.linear.bias

    def linear_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(x', W', bias) with F.linear(x', W', bias) == self(x): the low-rank branch appended to the input
        (x' = [x | scaling A dropout(x)], (..., in + r)) and B to the weight (W' = [W | B], (out, in + r))."""
        weight = dense_weight(self.linear.weight)
        if self.merged:
            return x, weight, self.linear.bias
        low = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A) * self.scaling  # (..., r)
        return torch.cat((x, low.to(x.dtype)), dim=-1), torch.cat((weight, self.full_B().to(weight.dtype)), 1), \
            self.linear.bias

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight, once; afterwards the module is a plain linear."""
        if self.merged:
            return
        weight = self.linear.weight
        if not weight.is_floating_point():
            raise ValueError(
                f"cannot merge LoRA into quantized base weights ({weight.dtype}); merge into the full-precision "
                "base checkpoint with `litgpt merge_lora CHECKPOINT_DIR`"
            )
        weight.add_(self.delta_weight().to(weight.dtype))
        self.merged = True

    def extra_repr(self) -> str:
        rows = "all" if self.row_ranges is None else ", ".join(f"{a}:{b}" for a, b in self.row_ranges)
        return f"r={self.r}, scaling={self.scaling:g}, rows={rows}, merged={self.merged}"


def _normalize_rows(
    rows: Optional[Sequence[tuple[int, int]]], out_features: int
) -> Optional[tuple[tuple[int, int], ...]]:
    """Sorted, coalesced (start, stop) row ranges, or None when they cover all rows."""
    if rows is None:
        return None
    merged: list[list[int]] = []
    for a, b in sorted(rows):
        if not 0 <= a < b <= out_features:
            raise ValueError(f"LoRA row range {a}:{b} is empty or outside the {out_features} output rows")
        if merged and a < merged[-1][1]:
            raise ValueError(f"LoRA row ranges overlap at {a}:{b}")
        if merged and a == merged[-1][1]:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    if not merged:
        raise ValueError("LoRA rows must name at least one output row (or be None for all)")
    if merged == [[0, out_features]]:
        return None
    return tuple((a, b) for a, b in merged)


# ---------------------------------------------------------------------------------------------- state-dict hooks
def _save_plain_keys(module: LoRALinear, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """`<prefix>linear.<k>` -> `<prefix><k>`, LoRA entries after the base's (and gone once merged)."""
    inner = prefix + "linear."
    own = [k for k in state_dict if k.startswith(prefix)]
    lora = {k: state_dict.pop(k) for k in own if k[len(prefix) :] in LORA_KEYS}
    for key in own:
        if key.startswith(inner):
            state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    if not module.merged:
        state_dict.update(lora)


def _load_plain_keys(module: LoRALinear, state_dict: dict, prefix: str, *args: Any) -> None:
    """`<prefix><k>` -> `<prefix>linear.<k>` for the base's entries (and a quantized base's extra ones)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest not in LORA_KEYS and not rest.startswith("linear."):
            state_dict[prefix + "linear." + rest] = state_dict.pop(key)


def _merged_needs_no_lora_keys(module: LoRALinear, incompatible_keys: Any) -> None:
    """A merged module has a plain state dict: loading one into it reports no missing LoRA entries."""
    if module.merged:
        for key in [k for k in incompatible_keys.missing_keys if k.rsplit(".", 1)[-1] in LORA_KEYS]:
            incompatible_keys.missing_keys.remove(key)


# ---------------------------------------------------------------------------------------------- targets
def attention_targets(attn: nn.Module, spec: LoRASpec) -> list[tuple[str, Optional[list[tuple[int, int]]]]]:
    """(attribute name, output rows or None for all) of each linear of an attention module the spec targets."""
    c = attn.config
    targets: list[tuple[str, Optional[list[tuple[int, int]]]]] = []
    if isinstance(attn, MultiheadLatentAttention):
        d, h = attn.dims, c.n_head
        if spec.query:
            targets += [("q_proj", None)] if d.q_lora_rank is None else [("q_a_proj", None), ("q_b_proj", None)]
        if spec.key:
            targets.append(("kv_a_proj_with_mqa", None))
        per_head = d.qk_nope_head_dim + d.v_head_dim
        parts = [(0, d.qk_nope_head_dim)] * spec.key + [(d.qk_nope_head_dim, per_head)] * spec.value
        if parts:
            targets.append(("kv_b_proj", [(i * per_head + a, i * per_head + b) for i in range(h) for a, b in parts]))
    elif isinstance(attn, CausalSelfAttention):
        q, kv = c.n_head * c.head_size, c.n_query_groups * c.head_size
        blocks = {"query": (0, q), "key": (q, q + kv), "value": (q + kv, q + 2 * kv)}
        rows = [span for name, span in blocks.items() if getattr(spec, name)]
        if rows:
            targets.append(("qkv", rows))
    else:
        raise ValueError(f"LoRA does not know the attention module {type(attn).__name__}; adapt a model with "
                         "CausalSelfAttention or MultiheadLatentAttention")
    if spec.projection:
        o_latent = isinstance(attn, MultiheadLatentAttention) and attn.dims.o_latent_dim is not None
        targets += [("o_a_proj", None), ("o_b_proj", None)] if o_latent else [("proj", None)]
    return targets


def mlp_targets(mlp: nn.Module) -> list[str]:
    if isinstance(mlp, LLaMAMLP):
        return ["fc_1", "fc_2", "proj"]
    if isinstance(mlp, GptNeoxMLP):
        return ["fc", "proj"]
    raise ValueError(f"lora_mlp does not apply to {type(mlp).__name__} MLPs; set lora_mlp to false")


def _wrap(parent: nn.Module, name: str, spec: LoRASpec, rows: Optional[list[tuple[int, int]]]) -> None:
    linear = getattr(parent, name)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"apply_lora: {name} is a {type(linear).__name__}, not an nn.Linear; apply LoRA to a plain "
                         "model")
    setattr(parent, name, LoRALinear(linear, spec.r, spec.alpha, spec.dropout, rows))


def apply_lora(model: BaseModel, spec: LoRASpec) -> None:
    """Turn the linears `spec` targets into `LoRALinear`s, in place, and leave only the LoRA parameters trainable
    (`mark_only_lora_as_trainable`). The base weights are kept as they are, so load a checkpoint before or after
    (`load_base_state_dict`). Targets: `TARGET_TABLE` (the table of this module).
    """
    model = _gpt(model)
    if is_lora(model):
        raise ValueError("apply_lora: the model has LoRA layers already; apply LoRA once, to a plain model")
    if spec.head and model.config.tie_embeddings:
        raise ValueError("apply_lora: the LM head of a tie_embeddings model is the embedding, so merging its update "
                         "would change the embedding too; leave the head out of the LoRA targets")
    for block in model.transformer.h:
        for name, rows in attention_targets(block.attn, spec):
            _wrap(block.attn, name, spec, rows)
        if spec.mlp:
            for name in mlp_targets(block.mlp):
                _wrap(block.mlp, name, spec, None)
    if spec.head:
        _wrap(model, "lm_head", spec, None)
    mark_only_lora_as_trainable(model)


# ---------------------------------------------------------------------------------------------- queries
def _gpt(model: nn.Module) -> nn.Module:
    """The model inside torch.compile, Fabric and DDP wrappers (names are then relative to it)."""
    for _ in range(4):
        if isinstance(model, BaseModel):
            break
        inner = next((getattr(model, a) for a in ("_orig_mod", "_forward_module", "module") if hasattr(model, a)), None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, module) of every LoRALinear, names relative to the GPT."""
    for name, module in _gpt(model).named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def is_lora(model: nn.Module) -> bool:
    """Whether the model has LoRA layers (merged or not)."""
    return any(True for _ in lora_modules(model))


def has_unmerged_lora(model: nn.Module) -> bool:
    """Whether some LoRA layer still holds its update outside the base weight (forward-correct, but not foldable)."""
    return any(not m.merged for _, m in lora_modules(model))


def lora_filter(name: str, value: Any = None) -> bool:
    """Whether a state-dict entry is a LoRA parameter (for `fabric.save(..., filter=...)` style filters)."""
    return name.rsplit(".", 1)[-1] in LORA_KEYS


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """requires_grad on the LoRA parameters only, and on biases as `bias` says: "none" (every bias frozen),
    "lora_only" (the biases of the LoRA layers' base linears train too), "all" (every bias trains too)."""
    if bias not in ("none", "lora_only", "all"):
        raise ValueError(f"bias must be 'none', 'lora_only' or 'all', got {bias!r}")
    model = _gpt(model)
    for name, p in model.named_parameters():
        p.requires_grad_(lora_filter(name) or (bias == "all" and name.rsplit(".", 1)[-1] == "bias"))
    if bias == "lora_only":
        for _, m in lora_modules(model):
            if m.linear.bias is not None:
                m.linear.bias.requires_grad_(True)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters (A and B of every LoRA layer), in module order."""
    return [p for _, m in lora_modules(model) for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA entries (`<module>.lora_A`, `<module>.lora_B`), detached: the `lit_model.pth.lora` file."""
    out: dict[str, torch.Tensor] = {}
    for name, m in lora_modules(model):
        if m.merged:
            raise ValueError(f"lora_state_dict: {name} is merged into its base weight already; take the LoRA state "
                             "dict before merge_lora, or save the merged model's state_dict instead")
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = m.lora_A.detach(), m.lora_B.detach()
    if not out:
        raise ValueError("lora_state_dict: the model has no LoRA layers; call apply_lora first")
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy a `lora_state_dict` into the model's (unmerged) LoRA layers, checking keys and shapes first."""
    modules = dict(lora_modules(model))
    if not modules:
        raise ValueError("load_lora_state_dict: the model has no LoRA layers; call apply_lora with the run's LoRA "
                         "settings first")
    merged = [n for n, m in modules.items() if m.merged]
    if merged:
        raise ValueError(f"load_lora_state_dict: {merged[0]} is merged already; load LoRA weights into a fresh LoRA "
                         "model (before merge_lora)")
    params = {f"{n}.{k}": getattr(m, k) for n, m in modules.items() for k in LORA_KEYS}
    missing, unexpected = sorted(set(params) - set(state_dict)), sorted(set(state_dict) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"LoRA state dict does not match the model's LoRA layers: missing {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''} ({len(missing)}), unexpected {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)}); apply_lora with the settings the weights "
            "were trained with (hyperparameters.yaml lora_*)"
        )
    for key, p in params.items():
        if state_dict[key].shape != p.shape:
            raise ValueError(
                f"LoRA tensor {key!r} is {tuple(state_dict[key].shape)} in the state dict but {tuple(p.shape)} in "
                "the model; apply_lora with the r the weights were trained with (hyperparameters.yaml lora_r)"
            )
    for key, p in params.items():
        p.copy_(state_dict[key])


def load_base_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a plain model's state dict (a `lit_model.pth`) into a LoRA model: every base entry must be there and
    match; the LoRA parameters are left as they are."""
    model = _gpt(model)
    expected = model.state_dict()
    for key, t in state_dict.items():
        want = expected.get(key)
        if want is not None and want.is_floating_point() and t.shape != want.shape:
            raise ValueError(
                f"base tensor {key!r} is {tuple(t.shape)} in the state dict but {tuple(want.shape)} in the model; "
                "point at the base checkpoint the model_config.yaml belongs to"
            )
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not lora_filter(k)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"base state dict does not match the model: missing {missing[:3]} ({len(missing)}), unexpected "
            f"{result.unexpected_keys[:3]} ({len(result.unexpected_keys)}); point at the base checkpoint the "
            "model_config.yaml belongs to"
        )


def merge_lora(model: nn.Module) -> None:
    """Add every LoRA update into its base weight, in place (idempotent): the model then computes what it did,
    with plain-linear layers, a plain state dict and foldable decode weights."""
    for _, m in lora_modules(model):
        m.merge()


def merge_for_decoding(model: nn.Module, owner: str) -> None:
    """For code that owns a model for decoding (`DecodeSession`): merge an unmerged LoRA model, with a warning
    that its LoRA parameters no longer train."""
    if has_unmerged_lora(model):
        warnings.warn(
            f"{owner}: merging the model's LoRA weights into its base weights for decoding (litgpt.lora.merge_lora);"
            " its LoRA parameters no longer train: decode a copy to keep fine-tuning",
            stacklevel=3,
        )
        merge_lora(model)


# ---------------------------------------------------------------------------------------------- upstream's names
def merge_lora_weights(model: nn.Module) -> None:
    """Upstream litgpt's name for `merge_lora`: add every LoRA update into its base weight, in place."""
    merge_lora(model)


@dataclass
class Config(BaseConfig):
    """A model config with the LoRA settings of upstream litgpt's `litgpt.lora.Config`: `GPT(config)` builds the
    model with LoRA layers on the targets whose flag is set (the table of this module says which linears each flag
    adapts), of rank `lora_r`, scale `lora_alpha / lora_r` and input dropout `lora_dropout`. With every flag off (the
    default) the model has no LoRA layers; a flag on with `lora_r` 0 is refused (`LoRASpec` checks the values)."""

    lora_r: int = 0
    lora_alpha: float = 1
    lora_dropout: float = 0.0
    lora_query: bool = False
    lora_key: bool = False
    lora_value: bool = False
    lora_projection: bool = False
    lora_mlp: bool = False
    lora_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lora_spec  # checks the LoRA values now, at construction

    @property
    def lora_spec(self) -> Optional[LoRASpec]:
        """The `LoRASpec` of these settings, or None when no target is enabled."""
        targets = {name: getattr(self, HPARAM_PREFIX + name) for name in TARGETS}
        if not any(targets.values()):
            return None
        return LoRASpec(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout, **targets)

    def base_config(self) -> BaseConfig:
        """The model's own fields as a plain `litgpt.Config` (what model_config.yaml of a merged model holds)."""
        return BaseConfig.from_dict({f.name: getattr(self, f.name) for f in fields(BaseConfig)})


class GPT(BaseModel):
    """Upstream litgpt's `litgpt.lora.GPT`: a GPT built from a `litgpt.lora.Config` with LoRA layers on the config's
    targets (`apply_lora`). As upstream, every parameter is trainable after construction: call
    `mark_only_lora_as_trainable(model)` before fine-tuning. State dicts keep the plain model's keys plus
    `<layer>.lora_A` / `<layer>.lora_B`, so a base checkpoint loads with `load_state_dict(..., strict=False)`."""

    def __init__(self, config: Config) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"litgpt.lora.GPT needs a litgpt.lora.Config, got {type(config).__name__}; build one with "
                            "litgpt.lora.Config.from_name(name, lora_r=..., lora_query=True, ...)")
        super().__init__(config)
        spec = config.lora_spec
        if spec is not None:
            apply_lora(self, spec)
            for p in self.parameters():
                p.requires_grad_(True)

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "GPT":
        return cls(Config.from_name(name, **kwargs))

