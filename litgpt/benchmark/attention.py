"""`litgpt benchmark attention`: latency, throughput, memory and accuracy of the real attention modules.

Implementations (each one layer of `litgpt.attention`, random weights, forward only):
  mha / gqa / mqa  -- `CausalSelfAttention` with n_head / gqa_groups / 1 query groups;
  mla-naive        -- `MultiheadLatentAttention` forced onto the decompress-then-SDPA path (`absorb = False`);
  mla-absorbed     -- the same module forced onto the absorbed path (`absorb = True`), in PyTorch;
  mla-fused        -- the absorbed path with the Triton decode kernel (`use_kernel = True`; CUDA, bf16/fp16, decode).
Every implementation but mla-fused runs with `use_kernel = False` where a module has that switch (PyTorch/SDPA).

Modes: `prefill` is a causal forward over seq_len tokens without a cache (as in training); `decode` is one new
token at position seq_len - 1 attending over a static KV cache of seq_len positions, with the mask and rope rows
that `GPT.forward` builds for a cached step.

`--check` runs a float64 reference on the same weights and inputs: for mha/gqa/mqa the module's own projections
and rope with an explicit softmax(QK^T)V over K/V repeated to every head; for the MLA variants the float64 naive
path (decompressed K/V) with the same explicit softmax. Errors are relative to the reference's largest magnitude.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

from litgpt.attention import AttentionBase, AttentionInputs, CausalSelfAttention, MultiheadLatentAttention
from litgpt.config import Config
from litgpt.kernels import KERNEL_DTYPES, TRITON_AVAILABLE, key_mask
from litgpt.kernels.fp8_cache import E4M3
from litgpt.kv_cache import check_kv_cache_dtype, kv_cache_bytes_per_token
from litgpt.rope import build_rope_cache
from litgpt.utils import command_line, format_number, parse_device, positive_ints

IMPLEMENTATIONS = ("mha", "gqa", "mqa", "mla-naive", "mla-absorbed", "mla-fused")
MODES = ("prefill", "decode")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --check passes when max |out - ref| <= tolerance * max |ref| (ref in float64). Set from the unit roundoff of
# each dtype times the depth of the computation (projections, softmax over S, output projection).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
REFERENCE_QUERY_CHUNK = 1024  # query rows per block in the explicit float64 softmax (bounds its memory)
CSV_COLUMNS = (
    "impl", "mode", "batch", "seq_len", "n_embd", "n_head", "head_size", "n_query_groups", "kv_lora_rank",
    "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank", "dtype", "kv_cache_dtype", "device",
    "latency_ms",
    "latency_min_ms", "tokens_per_s", "peak_mem_mib", "kv_values_per_token", "kv_cache_bytes", "max_abs_err",
    "max_rel_err", "status",
)


@dataclass(frozen=True)
class Shapes:
    """Attention dimensions shared by every implementation of one benchmark run."""

    n_embd: int
    n_head: int
    head_size: int
    gqa_groups: int
    mla: dict  # the latent_attention dict: q_lora_rank, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim

    def config(self, impl: str, block_size: int) -> Config:
        """A one-layer Pythia-style Config for `impl` (rotary_percentage 0.25, biases, as Pythia)."""
        groups = {"mha": self.n_head, "gqa": self.gqa_groups, "mqa": 1}
        common = dict(name=f"benchmark-{impl}", block_size=block_size, n_layer=1, n_embd=self.n_embd,
                      n_head=self.n_head, head_size=self.head_size)
        if impl.startswith("mla"):
            return Config(**common, latent_attention=dict(self.mla))
        return Config(**common, n_query_groups=groups[impl])


def benchmark_attention(
    implementations: Optional[list[str]] = None,
    modes: Optional[list[str]] = None,
    batch_sizes: Optional[list[int]] = None,
    seq_lens: Optional[list[int]] = None,
    n_head: int = 12,
    head_size: int = 64,
    n_embd: Optional[int] = None,
    gqa_groups: Optional[int] = None,
    kv_lora_rank: Optional[int] = None,
    qk_rope_head_dim: Optional[int] = None,
    qk_nope_head_dim: Optional[int] = None,
    v_head_dim: Optional[int] = None,
    q_lora_rank: Optional[int] = None,
    dtype: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
    device: Optional[str] = None,
    warmup: int = 5,
    trials: int = 20,
    check: bool = False,
    seed: int = 0,
    out_dir: Path = Path("out/benchmark/attention"),
) -> list[dict]:
    """Time the forward of one attention layer per implementation, mode, batch size and sequence length.

    Writes results.csv, latency.png, throughput.png, memory.png and summary.md under out_dir. The defaults are
    Pythia-160M's attention (12 heads of 64, n_embd 768; GQA with 3 groups as `pythia-160m-gqa`; MLA dims derived
    as `latent_attention: true` does: kv_lora_rank 256, qk_rope_head_dim 32, qk_nope_head_dim 64, v_head_dim 64).

    Args:
        implementations: any of mha, gqa, mqa, mla-naive, mla-absorbed, mla-fused (default: all; mla-fused only
            when the device is CUDA, since its Triton kernel runs only there). mla-fused is decode-only.
        modes: prefill (causal forward over seq_len tokens, no cache) and/or decode (one token over a cache of
            seq_len positions). Default: both.
        batch_sizes: batch sizes (default: 1 and 8).
        seq_lens: prompt lengths for prefill, cache lengths for decode (default: 512 to 8192, powers of two).
        n_head: attention heads.
        head_size: head size of mha/gqa/mqa, and the base the MLA defaults are derived from.
        n_embd: model width feeding the layer (default: n_head * head_size).
        gqa_groups: query groups of gqa (default: n_head // 4, as the -gqa configs).
        kv_lora_rank: MLA latent width d_c (default: 4 * head_size).
        qk_rope_head_dim: MLA decoupled rope key width d_R (default: head_size // 2).
        qk_nope_head_dim: MLA per-head non-rope query/key width d_n (default: head_size).
        v_head_dim: MLA per-head value width d_v (default: head_size).
        q_lora_rank: MLA query compression rank (default: none, a full-rank query projection).
        dtype: float32, bfloat16, float16 or float64 (default: bfloat16 on CUDA, float32 on CPU).
        kv_cache_dtype: the decode mode's cache format: null (dtype) or fp8_e4m3 (e4m3 values with float32 scales,
            `litgpt.kv_cache`); its --check reference reads the same quantized cache in float64.
        device: cuda, cuda:N or cpu (default: cuda when available).
        warmup: untimed calls before timing each configuration.
        trials: timed calls per configuration; latency is their median.
        check: compare every configuration's output to a float64 reference; fail if an error exceeds the dtype's
            tolerance (float32 1e-4, bfloat16 4e-2, float16 1e-2, float64 1e-9, relative to max |reference|).
        seed: seed of the random weights and inputs.
        out_dir: where results.csv, the plots and summary.md go.
    """
    command = command_line(locals(), "litgpt benchmark attention")
    from tqdm import tqdm

    check_kv_cache_dtype(kv_cache_dtype)
    torch_device = parse_device(device)
    cuda = torch_device.type == "cuda"
    torch_dtype = _dtype(dtype, cuda)
    implementations = _implementations(implementations, cuda)
    modes = _choices("modes", list(MODES) if modes is None else modes, MODES)
    batch_sizes = positive_ints("batch_sizes", [1, 8] if batch_sizes is None else batch_sizes)
    seq_lens = positive_ints("seq_lens", [512, 1024, 2048, 4096, 8192] if seq_lens is None else seq_lens)
    if warmup < 0 or trials <= 0:
        raise ValueError(f"--warmup must be >= 0 and --trials positive, got {warmup} and {trials}")
    shapes = _shapes(n_head, head_size, n_embd, gqa_groups, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim,
                     v_head_dim, q_lora_rank)
    if "mla-fused" in implementations:
        _check_fused(shapes, torch_dtype)

    configurations = [(impl, mode, b, t) for mode in modes for impl in implementations for b in batch_sizes
                      for t in seq_lens if not (impl == "mla-fused" and mode == "prefill")]
    rows = []
    progress = tqdm(configurations, desc="attention", unit="config")
    for impl, mode, batch, seq_len in progress:
        progress.set_postfix_str(f"{impl} {mode} B={batch} T={seq_len}")
        rows.append(measure(shapes, impl, mode, batch, seq_len, torch_dtype, torch_device, warmup, trials, check,
                            seed, kv_cache_dtype))
    failures = [r for r in rows if r["status"] == "check failed"]

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "results.csv")
    for metric in ("latency", "throughput", "memory"):
        plot(rows, metric, out_dir / f"{metric}.png")
    write_summary(rows, shapes, torch_dtype, torch_device, warmup, trials, check, command, out_dir / "summary.md",
                  kv_cache_dtype)
    print(f"wrote {out_dir}/results.csv, latency.png, throughput.png, memory.png, summary.md")
    if failures:
        r = failures[0]
        raise ValueError(
            f"--check failed for {len(failures)} configuration(s); first: {r['impl']} {r['mode']} batch {r['batch']} "
            f"seq_len {r['seq_len']}: max rel err {r['max_rel_err']:.3g} > tolerance {TOLERANCE[torch_dtype]:g} "
            f"({r['dtype']}), max abs err {r['max_abs_err']:.3g} (see {out_dir / 'summary.md'})"
        )
    return rows


# ---------------------------------------------------------------------------------------- one configuration
def measure(
    shapes: Shapes, impl: str, mode: str, batch: int, seq_len: int, dtype: torch.dtype, device: torch.device,
    warmup: int, trials: int, check: bool, seed: int = 0, kv_cache_dtype: Optional[str] = None,
) -> dict:
    """Time one (implementation, mode, batch, seq_len) and, with `check`, compare it to the float64 reference.
    kv_cache_dtype: the decode cache's format (a prefill has no cache)."""
    cuda = device.type == "cuda"
    config = shapes.config(impl, block_size=seq_len)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # peak memory of this configuration only
    row = dict(
        impl=impl, mode=mode, batch=batch, seq_len=seq_len, n_embd=shapes.n_embd, n_head=shapes.n_head,
        head_size=shapes.head_size, n_query_groups=config.n_query_groups if config.mla is None else "",
        **{k: "" if v is None else v for k, v in (shapes.mla if config.mla is not None else {}).items()},
        dtype=str(dtype).removeprefix("torch."), kv_cache_dtype=kv_cache_dtype if mode == "decode" else None,
        device=str(device), latency_ms=math.nan, latency_min_ms=math.nan,
        tokens_per_s=math.nan, peak_mem_mib=math.nan, kv_values_per_token=config.kv_values_per_token,
        kv_cache_bytes=batch * seq_len * kv_cache_bytes_per_token(config, dtype, kv_cache_dtype),  # one layer
        max_abs_err=math.nan, max_rel_err=math.nan, status="ok",
    )
    torch.manual_seed(seed)
    module = build_module(impl, config, device, dtype)
    try:
        inputs = make_inputs(module, mode, batch, seq_len, device, dtype, kv_cache_dtype)
        with torch.inference_mode():
            times = time_calls(lambda: module(**inputs), warmup, trials, device)
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
        return row
    if mode == "decode":
        assert module.kv_cache_bytes() == row["kv_cache_bytes"]
    times.sort()
    row["latency_ms"], row["latency_min_ms"] = times[len(times) // 2], times[0]
    new_tokens = batch * (seq_len if mode == "prefill" else 1)
    row["tokens_per_s"] = new_tokens / (row["latency_ms"] / 1e3)
    if cuda:
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if check:
        row["max_abs_err"], row["max_rel_err"] = check_against_reference(module, inputs, mode)
        if not row["max_rel_err"] <= TOLERANCE[dtype]:  # also catches NaN
            row["status"] = "check failed"
    return row


def build_module(impl: str, config: Config, device: torch.device, dtype: torch.dtype) -> AttentionBase:
    """The real attention module for `impl`, with random weights, its path (naive/absorbed/kernel) forced."""
    module_class = MultiheadLatentAttention if impl.startswith("mla") else CausalSelfAttention
    module = module_class(config).to(device=device, dtype=dtype).eval()
    if impl.startswith("mla"):
        module.absorb = impl != "mla-naive"
    module.use_kernel = impl == "mla-fused"  # every other implementation is the PyTorch path (SDPA, or torch absorbed)
    return module


def make_inputs(
    module: AttentionBase, mode: str, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
    kv_cache_dtype: Optional[str] = None,
) -> dict:
    """Keyword arguments of the module's forward: x and the `AttentionInputs` that `GPT.forward` would pass.

    decode fills a static cache of seq_len positions (in kv_cache_dtype) with random values (attention cost does
    not depend on them; an fp8 cache's scales are 1) and writes one new token at position seq_len - 1, so it
    attends over all seq_len positions.
    """
    config = module.config
    cos, sin = build_rope_cache(seq_len, config.rope_n_elem, device, config.rope_base, config.rope_condense_ratio)
    cos, sin = cos.to(dtype), sin.to(dtype)  # (seq_len, rope_n_elem), as a model cast to dtype holds them
    if mode == "prefill":
        x = torch.randn(batch, seq_len, config.n_embd, device=device, dtype=dtype)  # (B, T, n_embd)
        return dict(x=x, ctx=AttentionInputs(cos, sin))
    module.kv_cache = module.build_kv_cache(batch, seq_len, device=device, dtype=dtype, kv_cache_dtype=kv_cache_dtype)
    for name, buffer in module.kv_cache.named_buffers():
        if name.endswith("_scale"):
            buffer.fill_(1.0)
        elif buffer.dtype == E4M3:
            buffer.copy_(torch.randn(buffer.shape, device=device))
        else:
            buffer.normal_()
    input_pos = torch.tensor([seq_len - 1], device=device)  # (1,)
    x = torch.randn(batch, 1, config.n_embd, device=device, dtype=dtype)  # (B, 1, n_embd)
    return dict(x=x, ctx=AttentionInputs(cos[input_pos], sin[input_pos], input_pos))


def time_calls(fn: Callable[[], object], warmup: int, trials: int, device: torch.device) -> list[float]:
    """Milliseconds of each of `trials` calls after `warmup` untimed ones (CUDA events on CUDA)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return times
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(trials)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


# ---------------------------------------------------------------------------------------- float64 reference
def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: Optional[float] = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v written out, K/V repeated to every query head; a drop-in for `AttentionBase.attend`.

    q (B, nh, T, d), k (B, ng, S, d), v (B, ng, S, d_v); mask None means causal. Processed in query blocks.
    """
    B, nh, T, d = q.shape
    S = k.size(2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k = k.repeat_interleave(nh // k.size(1), dim=1)  # (B, nh, S, d)
    v = v.repeat_interleave(nh // v.size(1), dim=1)  # (B, nh, S, d_v)
    if mask is None:  # the last T of S tokens, causally
        mask = key_mask(torch.arange(S - T, S, device=q.device), S)  # (T, S)
    blocks = []
    for start in range(0, T, REFERENCE_QUERY_CHUNK):
        rows = slice(start, start + REFERENCE_QUERY_CHUNK)
        scores = q[:, :, rows] @ k.transpose(-1, -2) * scale  # (B, nh, t, S)
        scores = scores.masked_fill(~mask[..., rows, :], float("-inf"))
        blocks.append(torch.softmax(scores, dim=-1) @ v)  # (B, nh, t, d_v)
    return torch.cat(blocks, dim=2)  # (B, nh, T, d_v)


def reference_module(module: AttentionBase) -> AttentionBase:
    """A float64 copy of `module` (weights and cache) whose attention is the explicit softmax; MLA uses naive."""
    reference = copy.deepcopy(module).to(torch.float64)
    reference.attend = explicit_attention  # instance attribute shadows the SDPA staticmethod
    if isinstance(reference, MultiheadLatentAttention):
        reference.absorb = False
    reference.use_kernel = False
    return reference


@torch.inference_mode()
def check_against_reference(module: AttentionBase, inputs: dict, mode: str) -> tuple[float, float]:
    """(max abs error, max abs error / max |reference|) of the module's output versus the float64 reference.

    The module runs once more on a cache whose content the timing runs left unchanged (they rewrite the same
    position with the same values); the reference copies weights and cache after that.
    """
    output = module(**inputs).to(torch.float64)  # (B, T, n_embd)
    reference = reference_module(module)
    ctx = inputs["ctx"]
    as64 = dict(x=inputs["x"].to(torch.float64),
                ctx=dataclasses.replace(ctx, cos=ctx.cos.to(torch.float64), sin=ctx.sin.to(torch.float64)))
    if mode == "prefill":  # one row at a time bounds the reference's (nh, T, S) scores
        expected = torch.cat([reference(**{**as64, "x": as64["x"][b : b + 1]}) for b in range(output.size(0))])
    else:
        expected = reference(**as64)
    max_abs = (output - expected).abs().max().item()
    return max_abs, max_abs / expected.abs().max().item()


# ---------------------------------------------------------------------------------------- outputs
def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], metric: str, path: Path) -> None:
    """One panel per (mode, batch size), one line per implementation, sequence length on a log2 axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuda = any(r["device"].startswith("cuda") for r in rows)
    key, label = {
        "latency": ("latency_ms", "latency (ms, median)"),
        "throughput": ("tokens_per_s", "new tokens / s"),
        "memory": ("peak_mem_mib", "peak memory (MiB)") if cuda else ("kv_cache_bytes", "KV cache (MiB)"),
    }[metric]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    batches = sorted({r["batch"] for r in rows})
    figure, axes = plt.subplots(len(modes), len(batches), figsize=(5 * len(batches), 3.8 * len(modes)),
                                squeeze=False)
    for i, mode in enumerate(modes):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            for impl in IMPLEMENTATIONS:
                points = sorted((r["seq_len"], r[key]) for r in rows
                                if (r["impl"], r["mode"], r["batch"]) == (impl, mode, batch))
                if points:
                    x, y = zip(*points)
                    y = [v / 2**20 for v in y] if key == "kv_cache_bytes" else y
                    ax.plot(x, y, marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{mode}, batch {batch}")
            ax.set_xlabel("sequence length" if mode == "prefill" else "cached tokens")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    note = "" if cuda else " (CPU: peak memory is not measured; KV cache size shown)" if metric == "memory" else ""
    figure.suptitle(f"attention {metric}, {rows[0]['dtype']}, {rows[0]['device']}{note}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_summary(
    rows: list[dict], shapes: Shapes, dtype: torch.dtype, device: torch.device, warmup: int, trials: int,
    check: bool, command: str, path: Path, kv_cache_dtype: Optional[str] = None,
) -> None:
    """Markdown: setup, one table per mode, and what each column means."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    mla = ", ".join(f"{k} {v}" for k, v in shapes.mla.items())
    lines = [
        "# Attention benchmark",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; device: {name}; "
        f"torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}; "
        f"decode KV cache {kv_cache_dtype or str(dtype).removeprefix('torch.')}",
        f"- command: `{command}`",
        f"- shapes: n_embd {shapes.n_embd}, {shapes.n_head} heads of {shapes.head_size}, gqa {shapes.gqa_groups} "
        f"groups; MLA {mla}",
        f"- timing: median of {trials} calls after {warmup} warmup calls"
        + (" (CUDA events)" if cuda else " (wall clock)") + "; one layer, forward only, eager mode",
        "",
    ]
    header = ("| impl | batch | seq_len | latency ms | tokens/s | peak MiB | KV cache MiB | KV values/token "
              "| max abs err | max rel err | status |")
    for mode in MODES:
        mode_rows = [r for r in rows if r["mode"] == mode]
        if not mode_rows:
            continue
        lines += [f"## {mode}", "", header, "|" + "---|" * 11]
        for r in mode_rows:
            status = f"**{r['status'].upper()}**" if r["status"] != "ok" else "ok"
            lines.append(
                f"| {r['impl']} | {r['batch']} | {r['seq_len']} | {format_number(r['latency_ms'], '.4g')} "
                f"| {format_number(r['tokens_per_s'], ',.0f')} "
                f"| {format_number(r['peak_mem_mib'], '.1f')} | {r['kv_cache_bytes'] / 2**20:.2f} | {r['kv_values_per_token']} "
                f"| {format_number(r['max_abs_err'], '.2e')} | {format_number(r['max_rel_err'], '.2e')} | {status} |"
            )
        lines.append("")
    failed = sum(r["status"] == "check failed" for r in rows)
    lines += [
        "## Notes",
        "",
        "- prefill: causal forward over seq_len new tokens, no cache; tokens/s = batch * seq_len / latency.",
        "- decode: one new token at position seq_len - 1 over a static KV cache of seq_len positions; "
        "tokens/s = batch / latency.",
        "- KV cache MiB: what a cache holding batch x seq_len tokens of this one layer takes in this dtype "
        "(KV values/token x element size; in fp8_e4m3, 1 byte a value plus float32 scales, MLA's rope key in the "
        "dtype: `litgpt.kv_cache.kv_cache_bytes_per_token`).",
        "- peak MiB: `torch.cuda.max_memory_allocated` after a reset per configuration (weights, inputs, cache, "
        "activations)." if cuda else
        "- peak MiB: not measured on CPU (there is no allocator peak counter), so the column is empty.",
        "- mla-fused runs in decode mode only: its kernel attends one new query token over the latent cache."
        if any(r["impl"] == "mla-fused" for r in rows) else
        "- mla-fused (the Triton decode kernel) is not in this run: it needs CUDA.",
    ]
    if check:
        lines.append(
            f"- check: float64 reference on the same weights and inputs (explicit softmax over repeated K/V; MLA "
            f"through the naive path); max rel err = max |out - ref| / max |ref|; tolerance for "
            f"{str(dtype).removeprefix('torch.')}: {TOLERANCE[dtype]:g}. "
            + (f"**{failed} configuration(s) FAILED.**" if failed else "All configurations passed.")
        )
    else:
        lines.append("- check: not run (pass --check to compare against a float64 reference).")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- argument handling
def _dtype(dtype: Optional[str], cuda: bool) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if cuda else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _implementations(implementations: Optional[list[str]], cuda: bool) -> list[str]:
    if implementations is None:
        return [i for i in IMPLEMENTATIONS if cuda or i != "mla-fused"]
    implementations = _choices("implementations", implementations, IMPLEMENTATIONS)
    if "mla-fused" in implementations and not cuda:
        raise ValueError("mla-fused runs a Triton kernel that needs a CUDA device; drop it or use --device cuda")
    return implementations


def _check_fused(shapes: Shapes, dtype: torch.dtype) -> None:
    """mla-fused must really run the kernel: outside its domain `mla_decode_attention` falls back to torch."""
    if not TRITON_AVAILABLE:
        raise ValueError("mla-fused needs the `triton` package (pip install triton); drop it from --implementations")
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"mla-fused runs in bfloat16 or float16 only, not {dtype}; pass --dtype bfloat16")
    widths = (shapes.mla["kv_lora_rank"], shapes.mla["qk_rope_head_dim"])
    if any(w % 16 for w in widths):
        raise ValueError(f"mla-fused needs kv_lora_rank and qk_rope_head_dim multiples of 16, got {widths}")


def _choices(name: str, values: list[str], allowed: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"--{name}: unknown or empty {unknown or values}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(values))


def _shapes(
    n_head: int, head_size: int, n_embd: Optional[int], gqa_groups: Optional[int], kv_lora_rank: Optional[int],
    qk_rope_head_dim: Optional[int], qk_nope_head_dim: Optional[int], v_head_dim: Optional[int],
    q_lora_rank: Optional[int],
) -> Shapes:
    """Resolve defaults (MLA dims as `latent_attention: true` derives them) and validate through `Config`."""
    n_embd = n_head * head_size if n_embd is None else n_embd
    gqa_groups = max(1, n_head // 4) if gqa_groups is None else gqa_groups
    derived = Config(n_embd=n_embd, n_head=n_head, head_size=head_size, n_layer=1, latent_attention=True)
    given = dict(q_lora_rank=q_lora_rank, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim,
                 qk_nope_head_dim=qk_nope_head_dim, v_head_dim=v_head_dim)
    mla = {k: derived.latent_attention[k] if v is None else v for k, v in given.items()}
    shapes = Shapes(n_embd=n_embd, n_head=n_head, head_size=head_size, gqa_groups=gqa_groups, mla=mla)
    for impl in ("mha", "gqa", "mla-naive"):
        try:
            shapes.config(impl, block_size=1)
        except ValueError as e:
            raise ValueError(f"bad attention dimensions for {impl}: {e}") from None
    return shapes
