"""Convert an MHA/GQA/MQA checkpoint into a multi-head latent attention (MLA) checkpoint:
`litgpt convert_to_mla checkpoint_dir out_dir --kv_lora_rank 64 --qk_rope_head_dim 8`.

Method, per layer (the other weights are copied as they are):

1. Rope pairs. The source ropes the first rope_n_elem dims of every head: rope_n_elem/2 two-dimensional frequency
   pairs (rotate-half: dims (j, j + n/2); interleaved: (2j, 2j+1)). qk_rope_head_dim/2 of them are kept as MLA's
   decoupled rope key (MHA2MLA-style): pairs are ranked by their share of the query-key products, from the weights
   alone (sum over heads of ||W_q pair|| * ||W_k pair||) or, with calibration text, from activations (mean over
   tokens of sum over heads of ||q pair|| * ||k pair||; rotation keeps a pair's norm, so pre-rope norms serve).
   Kept pairs keep their order and take MLA's rope slots; every other query/key dim (dropped pairs too) becomes a
   "nope" dim, so qk_nope_head_dim = head_size - qk_rope_head_dim and the softmax scale stays 1/sqrt(head_size).
2. Rope key. MLA's rope key is ONE head shared by all query heads. With one K group (MQA) it is that group's kept
   rows, exactly; with several groups (MHA, GQA) no single key can equal them all, so the kept rows are averaged over
   the groups: an approximation.
3. Latent. The per-head stacked map [K_nope; V] (h * (d_n + d_v), n_embd) (a head reads its own group's rows) is
   factorised by truncated SVD, U S V^T ~ (U S^1/2)(S^1/2 V^T): kv_a's latent rows are S^1/2 V^T (rank kv_lora_rank)
   and kv_b_proj is U S^1/2. At kv_lora_rank = the map's rank (<= min(n_embd, groups * (d_n + d_v))) this is exact.
4. Latent norm. MLA applies an RMSNorm (kv_a_norm) to the latent, which no linear map undoes: its gain is set to
   the expected RMS of the latent (from calibration activations, else from the weights for unit-variance inputs to
   norm_1's gain and shift), so that the norm is close to the identity on typical tokens. This is always an
   approximation; the factorisation itself (before the norm) is what is exact. Fine-tuning heals the difference.
5. Query. q_proj takes each head's query rows reordered to [nope | kept rope pairs in MLA's layout].
6. Output. With o_latent_dim (MLA-o), `proj` is factorised by truncated SVD into o_a_proj (S^1/2 V^T) and o_b_proj
   (U S^1/2), without the output-latent norm: exact at o_latent_dim >= proj's rank.
7. Frequencies. MLA ropes qk_rope_head_dim dims with its own frequency ladder: keeping every pair (qk_rope_head_dim =
   rope_n_elem) keeps the source frequencies exactly; keeping fewer re-assigns the kept pairs the ladder of the
   narrower rope, an approximation.

Exact (before fine-tuning) only in one case, and only up to the latent norm of step 4: an MQA source, all rope pairs
kept and kv_lora_rank at the stacked map's rank. Biases: a query bias needs the target's `bias`, a rope-key bias
its `attn_bias` (the target sets attn_bias when the source's qkv has a bias); a query bias that cannot be kept is
dropped with a warning.

The output directory (lit_model.pth, model_config.yaml named <name>-mla, tokenizer files, convert_report.json) is
written atomically; it may not be, or hold, the source checkpoint or the calibration data. Heal the converted model
with `litgpt finetune_full` or `litgpt pretrain --initial_checkpoint_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from litgpt.checkpoint import atomic_torch_save, load_checkpoint, save_config
from litgpt.config import DEFAULT_ROTARY_PERCENTAGE, Config
from litgpt.model import GPT
from litgpt.tokenizer import TOKENIZER_FILES
from litgpt.utils import atomic_directory, check_output_spares_inputs

REPORT_FILE = "convert_report.json"
EXTRA_FILES = ("prompt_style.yaml",)  # copied beside the tokenizer files where present


def convert_to_mla(
    checkpoint_dir: Path,
    out_dir: Path,
    kv_lora_rank: int,
    qk_rope_head_dim: int,
    o_latent_dim: Optional[int] = None,
    calibration_data: Optional[Path] = None,
    calibration_tokens: int = 4096,
) -> dict[str, Any]:
    """Convert the MHA/GQA/MQA checkpoint in checkpoint_dir to MLA and write it to out_dir (method: the module).

    Args:
        checkpoint_dir: the source checkpoint (lit_model.pth, model_config.yaml, tokenizer files).
        out_dir: the directory to write (replaced atomically if it exists).
        kv_lora_rank: the latent width d_c (1 .. the stacked [K_nope; V] map's rank bound).
        qk_rope_head_dim: the decoupled rope key's width d_R (even, <= the source's rope dims per head).
        o_latent_dim: MLA-o's output latent width (SVD of `proj`); None keeps `proj`. For a source that is MLA
            already, this is the only change made (kv_lora_rank and qk_rope_head_dim must then equal its own).
        calibration_data: a text file, or a directory of .txt files, to rank rope pairs and set the latent norm's
            gain from activations; default: from the weights alone.
        calibration_tokens: how many tokens of calibration_data to run.

    Returns the report (also printed as a table and written to out_dir/convert_report.json).
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    check_output_spares_inputs(  # out_dir is replaced as a whole: no input may be in it
        "--out_dir", out_dir, {"--checkpoint_dir": checkpoint_dir, "--calibration_data": calibration_data}
    )
    source = load_checkpoint(checkpoint_dir).eval()
    config = source.config
    if config.mla is not None:
        state, target, layers = _add_output_latent(source, kv_lora_rank, qk_rope_head_dim, o_latent_dim)
    else:
        _check_ranks(config, kv_lora_rank, qk_rope_head_dim)
        stats = None
        if calibration_data is not None:
            stats = calibration_statistics(source, checkpoint_dir, Path(calibration_data), calibration_tokens)
        target = mla_config(config, kv_lora_rank, qk_rope_head_dim, o_latent_dim)
        state, layers = convert_state_dict(source, target, stats)
    dtype = source.lm_head.weight.dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    GPT(target).load_state_dict(state, strict=True)  # keys and shapes as the target config builds them
    report = _report(config, target, layers, dtype, calibration_data)
    with atomic_directory(out_dir) as tmp:
        atomic_torch_save(state, tmp / "lit_model.pth")
        save_config(target, tmp)
        for name in (*TOKENIZER_FILES, *EXTRA_FILES):
            if (checkpoint_dir / name).is_file():
                shutil.copyfile(checkpoint_dir / name, tmp / name)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return report


# ---------------------------------------------------------------------------------------------- checks and config
def _check_ranks(config: Config, kv_lora_rank: int, qk_rope_head_dim: int) -> None:
    """One-line errors for ranks the conversion cannot make."""
    rope = config.rope_n_elem
    if isinstance(qk_rope_head_dim, bool) or not isinstance(qk_rope_head_dim, int) or qk_rope_head_dim <= 0:
        raise ValueError(f"qk_rope_head_dim must be a positive even integer, got {qk_rope_head_dim!r}")
    if qk_rope_head_dim % 2:
        raise ValueError(f"qk_rope_head_dim must be even (rope rotates pairs of dims), got {qk_rope_head_dim}")
    if qk_rope_head_dim > rope:
        raise ValueError(f"qk_rope_head_dim ({qk_rope_head_dim}) must be <= the source's rope dims per head ({rope})")
    bound = kv_rank_bound(config, qk_rope_head_dim)
    if isinstance(kv_lora_rank, bool) or not isinstance(kv_lora_rank, int) or not 0 < kv_lora_rank <= bound:
        raise ValueError(
            f"kv_lora_rank must be in 1..{bound} (the rank bound of the stacked [K_nope; V] map: min(n_embd, "
            f"groups * (head_size - qk_rope_head_dim + head_size))), got {kv_lora_rank!r}"
        )


def kv_rank_bound(config: Config, qk_rope_head_dim: int) -> int:
    """The most a truncated SVD of the stacked [K_nope; V] map can keep: min(n_embd, groups * (d_n + d_v))."""
    hs = config.head_size
    return min(config.n_embd, config.n_query_groups * (2 * hs - qk_rope_head_dim))


def mla_config(config: Config, kv_lora_rank: int, qk_rope_head_dim: int, o_latent_dim: Optional[int]) -> Config:
    """The source config as MLA: one group per head, the rope width in latent_attention, the rest as it was."""
    hs = config.head_size
    latent = dict(q_lora_rank=None, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim,
                  qk_nope_head_dim=hs - qk_rope_head_dim, v_head_dim=hs)
    if o_latent_dim is not None:
        latent["o_latent_dim"] = o_latent_dim
    fields = dataclasses.asdict(config)
    fields.update(
        name=f"{config.name}-mla", n_query_groups=config.n_head, rotary_percentage=DEFAULT_ROTARY_PERCENTAGE,
        latent_attention=latent, attn_bias=config.attn_bias or config.bias,  # kv_a keeps a rope-key bias
    )
    return Config(**fields)


# ---------------------------------------------------------------------------------------------- the conversion
def pair_dims(n_rope: int, interleave: bool) -> list[tuple[int, int]]:
    """The (first, second) dims of each rope frequency pair of a head, pair j at frequency j."""
    if interleave:
        return [(2 * j, 2 * j + 1) for j in range(n_rope // 2)]
    return [(j, j + n_rope // 2) for j in range(n_rope // 2)]


def head_layout(config: Config, kept: list[int], qk_rope_head_dim: int) -> tuple[list[int], list[int]]:
    """Source dims of a head for MLA's [nope | rope] query/key: the nope dims in order and the kept pairs' dims in
    MLA's rope layout (rotate-half: all first halves then all second halves; interleaved: pair by pair)."""
    pairs = [pair_dims(config.rope_n_elem, config.rope_interleave)[j] for j in sorted(kept)]
    if config.rope_interleave:
        rope = [d for pair in pairs for d in pair]
    else:
        rope = [a for a, _ in pairs] + [b for _, b in pairs]
    nope = [d for d in range(config.head_size) if d not in set(rope)]
    assert len(rope) == qk_rope_head_dim
    return nope, rope


def pair_scores_from_weights(w_q: torch.Tensor, w_k: torch.Tensor, config: Config) -> torch.Tensor:
    """Per rope pair: sum over heads of ||W_q rows of the pair|| * ||W_k rows of its group's pair||.
    w_q (h, hs, n_embd), w_k (groups, hs, n_embd) -> (rope_n_elem / 2,)."""
    per_group = config.n_head // config.n_query_groups
    scores = []
    for a, b in pair_dims(config.rope_n_elem, config.rope_interleave):
        q_norm = w_q[:, [a, b]].flatten(1).norm(dim=1)  # (h,)
        k_norm = w_k[:, [a, b]].flatten(1).norm(dim=1).repeat_interleave(per_group)  # (h,)
        scores.append((q_norm * k_norm).sum())
    return torch.stack(scores)


def low_rank(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD weight (out, in) ~ up (out, rank) @ down (rank, in), the singular values split evenly, and
    the relative Frobenius error. Components past the matrix's own rank come back as zero rows/columns."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    up = weight.new_zeros(weight.size(0), rank)
    down = weight.new_zeros(rank, weight.size(1))
    up[:, :k], down[:k] = u[:, :k] * root, root[:, None] * vh[:k]
    error = ((weight - up @ down).norm() / weight.norm().clamp_min(1e-30)).item()
    return up, down, error


def convert_state_dict(
    source: GPT, target: Config, stats: Optional[list[dict[str, torch.Tensor]]] = None
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The target's state dict (float64) from the source model, and per layer what was kept and lost."""
    c, d = source.config, target.mla
    h, ng, hs, n_embd = c.n_head, c.n_query_groups, c.head_size, c.n_embd
    per_group = h // ng
    state = {k: v.to(torch.float64) for k, v in source.state_dict().items() if ".attn." not in k}
    layers = []
    for i, block in enumerate(source.transformer.h):
        prefix = f"transformer.h.{i}.attn."
        w = block.attn.qkv.weight.detach().to(torch.float64)
        b = None if block.attn.qkv.bias is None else block.attn.qkv.bias.detach().to(torch.float64)
        w_q, w_k, w_v = w.split((h * hs, ng * hs, ng * hs))
        w_q, w_k, w_v = w_q.view(h, hs, n_embd), w_k.view(ng, hs, n_embd), w_v.view(ng, hs, n_embd)
        scores = pair_scores_from_weights(w_q, w_k, c) if stats is None else stats[i]["pair_scores"]
        kept = sorted(scores.argsort(descending=True)[: d.qk_rope_head_dim // 2].tolist())
        nope, rope = head_layout(c, kept, d.qk_rope_head_dim)
        group = torch.arange(h) // per_group  # each head's K/V group
        # query: per head [nope | rope]
        state[prefix + "q_proj.weight"] = w_q[:, nope + rope].reshape(h * d.qk_head_dim, n_embd)
        # stacked per-head [K_nope; V] (h, d_n + d_v, n_embd) and its truncated SVD
        stacked = torch.cat((w_k[group][:, nope], w_v[group]), dim=1).reshape(-1, n_embd)
        up, down, kv_error = low_rank(stacked, d.kv_lora_rank)
        rope_key = w_k[:, rope].mean(0)  # (d_R, n_embd): exact for one group, the groups' mean otherwise
        state[prefix + "kv_a_proj_with_mqa.weight"] = torch.cat((down, rope_key))
        state[prefix + "kv_b_proj.weight"] = up
        if target.bias:
            state[prefix + "kv_b_proj.bias"] = torch.zeros(up.size(0), dtype=torch.float64)
            state[prefix + "q_proj.bias"] = torch.zeros(h * d.qk_head_dim, dtype=torch.float64)
        latent_bias = torch.zeros(d.kv_lora_rank, dtype=torch.float64)
        if b is not None:
            b_q, b_k, b_v = b.split((h * hs, ng * hs, ng * hs))
            b_q, b_k, b_v = b_q.view(h, hs), b_k.view(ng, hs), b_v.view(ng, hs)
            b_stacked = torch.cat((b_k[group][:, nope], b_v[group]), dim=1).flatten()
            if target.bias:
                state[prefix + "q_proj.bias"] = b_q[:, nope + rope].flatten()
                state[prefix + "kv_b_proj.bias"] = b_stacked
            else:  # no up-projection bias: the latent's bias that up maps closest to it
                latent_bias = torch.linalg.lstsq(up, b_stacked[:, None]).solution[:, 0]
                if b_q.abs().max() > 0:
                    warnings.warn(f"convert_to_mla: layer {i}'s query bias is dropped (the MLA config has no q_proj "
                                  "bias without `bias`)", stacklevel=2)
            kv_a_bias = torch.cat((latent_bias, b_k[:, rope].mean(0)))
        else:
            kv_a_bias = torch.zeros(d.cache_width, dtype=torch.float64)
        if target.attn_bias:
            state[prefix + "kv_a_proj_with_mqa.bias"] = kv_a_bias
        if stats is None:
            gain = latent_rms(down, latent_bias, block.norm_1)
        else:
            gain = stats[i]["latent_rms"](down, latent_bias)
        state[prefix + "kv_a_norm.weight"] = torch.full((d.kv_lora_rank,), gain, dtype=torch.float64)
        o_error = _output_map(block.attn.proj, target, prefix, state)
        layers.append(dict(layer=i, kept_rope_pairs=kept, kv_relative_error=kv_error, o_relative_error=o_error,
                           latent_norm_gain=gain))
    return state, layers


def _output_map(proj: torch.nn.Linear, target: Config, prefix: str, state: dict[str, torch.Tensor]) -> Optional[float]:
    """Write `proj` (or MLA-o's o_a_proj / o_b_proj from its truncated SVD) into state; the SVD's error or None."""
    w = proj.weight.detach().to(torch.float64)
    bias = None if proj.bias is None else proj.bias.detach().to(torch.float64)
    d = target.mla
    if d.o_latent_dim is None:
        state[prefix + "proj.weight"] = w
        if bias is not None:
            state[prefix + "proj.bias"] = bias
        return None
    up, down, error = low_rank(w, d.o_latent_dim)
    state[prefix + "o_a_proj.weight"], state[prefix + "o_b_proj.weight"] = down, up
    if target.attn_bias:
        state[prefix + "o_a_proj.bias"] = torch.zeros(d.o_latent_dim, dtype=torch.float64)
    if target.bias:
        state[prefix + "o_b_proj.bias"] = torch.zeros(w.size(0), dtype=torch.float64) if bias is None else bias
    return error


def latent_rms(down: torch.Tensor, bias: torch.Tensor, norm_1: torch.nn.Module) -> float:
    """Expected RMS of the latent down @ x + bias for x = norm_1's output on unit-variance input (gain g, shift b):
    sqrt((||down diag(g)||_F^2 + ||down b + bias||^2) / d_c)."""
    g = norm_1.weight.detach().to(torch.float64)
    shift = getattr(norm_1, "bias", None)
    mean = bias + (0 if shift is None else down @ shift.detach().to(torch.float64))
    return (((down * g).square().sum() + mean.square().sum()) / down.size(0)).sqrt().clamp_min(1e-6).item()


def _add_output_latent(
    source: GPT, kv_lora_rank: int, qk_rope_head_dim: int, o_latent_dim: Optional[int]
) -> tuple[dict[str, torch.Tensor], Config, list[dict[str, Any]]]:
    """An MLA source: only MLA-o is added (o_a_proj / o_b_proj from `proj`)."""
    config, d = source.config, source.config.mla
    if o_latent_dim is None:
        raise ValueError(f"{config.name or 'the source'} is MLA already; pass --o_latent_dim to add MLA-o, or convert "
                         "an MHA/GQA/MQA checkpoint")
    if d.o_latent_dim is not None:
        raise ValueError(f"the source has MLA-o already (o_latent_dim {d.o_latent_dim}); convert its proj-based form")
    if (kv_lora_rank, qk_rope_head_dim) != (d.kv_lora_rank, d.qk_rope_head_dim):
        raise ValueError(f"the source is MLA with kv_lora_rank {d.kv_lora_rank} and qk_rope_head_dim "
                         f"{d.qk_rope_head_dim}; pass those values to add only MLA-o")
    fields = dataclasses.asdict(config)
    fields.update(name=f"{config.name}-o", latent_attention={**config.latent_attention, "o_latent_dim": o_latent_dim})
    target = Config(**fields)
    state = {k: v.to(torch.float64) for k, v in source.state_dict().items() if not k.endswith(("attn.proj.weight",
                                                                                                "attn.proj.bias"))}
    layers = []
    for i, block in enumerate(source.transformer.h):
        error = _output_map(block.attn.proj, target, f"transformer.h.{i}.attn.", state)
        layers.append(dict(layer=i, kept_rope_pairs=None, kv_relative_error=0.0, o_relative_error=error,
                           latent_norm_gain=None))
    return state, target, layers


# ---------------------------------------------------------------------------------------------- calibration
def read_calibration_text(path: Path) -> str:
    """A text file's text, or a directory's .txt files joined."""
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"calibration_data {str(path)!r} holds no .txt files")
        return "\n".join(f.read_text(errors="replace") for f in files)
    if not path.is_file():
        raise FileNotFoundError(f"calibration_data {str(path)!r} does not exist; pass a text file or a directory")
    return path.read_text(errors="replace")


@torch.no_grad()
def calibration_statistics(
    source: GPT, checkpoint_dir: Path, path: Path, n_tokens: int
) -> list[dict[str, Any]]:
    """Per layer, from the source's activations on n_tokens of text: rope pair scores (mean over tokens of sum over
    heads of ||q pair|| * ||k pair||) and a function (down, bias) -> mean RMS of that latent over the tokens."""
    from litgpt.tokenizer import Tokenizer

    ids = Tokenizer(checkpoint_dir).encode(read_calibration_text(path))[:n_tokens]
    if ids.numel() < 2:
        raise ValueError(f"calibration_data {str(path)!r} gives fewer than 2 tokens; pass more text")
    c = source.config
    inputs: list[list[torch.Tensor]] = [[] for _ in source.transformer.h]
    hooks = [block.attn.register_forward_pre_hook(lambda m, args, i=i: inputs[i].append(args[0].flatten(0, 1)))
             for i, block in enumerate(source.transformer.h)]
    try:
        for chunk in ids.split(c.block_size):
            source(chunk[None])
    finally:
        for hook in hooks:
            hook.remove()
    stats = []
    per_group = c.n_head // c.n_query_groups
    for i, block in enumerate(source.transformer.h):
        x = torch.cat(inputs[i]).to(torch.float64)  # (N, n_embd): the attention's input
        qkv = torch.nn.functional.linear(x, block.attn.qkv.weight.to(torch.float64),
                                         None if block.attn.qkv.bias is None else block.attn.qkv.bias.to(torch.float64))
        q, k, _ = qkv.split((c.n_head * c.head_size, c.n_query_groups * c.head_size, c.n_query_groups * c.head_size),
                            dim=-1)
        q, k = q.view(-1, c.n_head, c.head_size), k.view(-1, c.n_query_groups, c.head_size)
        scores = []
        for a, b in pair_dims(c.rope_n_elem, c.rope_interleave):
            k_norm = k[..., [a, b]].norm(dim=-1).repeat_interleave(per_group, dim=1)  # (N, h)
            scores.append((q[..., [a, b]].norm(dim=-1) * k_norm).sum(1).mean())
        scores = torch.stack(scores)  # (rope_n_elem / 2,)
        stats.append(dict(pair_scores=scores, latent_rms=lambda down, bias, x=x: (
            (x @ down.T + bias).square().mean(-1).sqrt().mean().clamp_min(1e-6).item())))
    return stats


# ---------------------------------------------------------------------------------------------- report
def _report(source: Config, target: Config, layers: list[dict[str, Any]], dtype: torch.dtype,
            calibration_data: Optional[Path]) -> dict[str, Any]:
    size = torch.empty((), dtype=dtype).element_size()
    before, after = source.kv_values_per_token * size, target.kv_values_per_token * size
    return dict(
        source=source.name, target=target.name, dtype=str(dtype).removeprefix("torch."),
        kv_lora_rank=target.mla.kv_lora_rank, qk_rope_head_dim=target.mla.qk_rope_head_dim,
        o_latent_dim=target.mla.o_latent_dim, rope_pairs_from="calibration" if calibration_data else "weights",
        kv_bytes_per_token_per_layer=dict(before=before, after=after),
        kv_bytes_per_token=dict(before=before * source.n_layer, after=after * target.n_layer), layers=layers,
    )


def print_report(report: dict[str, Any]) -> None:
    """The per-layer table: [K_nope; V] and proj reconstruction errors, rope pairs kept, KV bytes per token."""
    kv = report["kv_bytes_per_token_per_layer"]
    print(f"{report['source']} -> {report['target']} (kv_lora_rank {report['kv_lora_rank']}, qk_rope_head_dim "
          f"{report['qk_rope_head_dim']}, o_latent_dim {report['o_latent_dim']})")
    print(f"{'layer':>5}  {'[K_nope;V] rel err':>18}  {'proj rel err':>12}  {'KV B/token before':>17}  "
          f"{'after':>6}  rope pairs kept")
    for row in report["layers"]:
        o_err = "-" if row["o_relative_error"] is None else f"{row['o_relative_error']:.3e}"
        print(f"{row['layer']:>5}  {row['kv_relative_error']:>18.3e}  {o_err:>12}  {kv['before']:>17}  "
              f"{kv['after']:>6}  {row['kept_rope_pairs']}")
    total = report["kv_bytes_per_token"]
    print(f"total KV bytes per token: {total['before']} -> {total['after']} "
          f"({total['after'] / total['before']:.1%})")


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("convert_to_mla")
