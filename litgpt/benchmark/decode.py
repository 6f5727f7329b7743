"""Decode speed of the one static decode step at a nearly full KV cache, beside its byte floor, and the
`litgpt benchmark decode` command (throughput vs context and batch per model, KV bytes per token, capacity).

`benchmark_decode` fills a cache of `context_length` positions with a prefill of random tokens (chunked), then
times decode steps at the last positions of the context. The floor is the bytes a step must read at `BANDWIDTH`
bytes/s: the weights it uses (`step_weight_bytes`: of a mixture of experts' routed experts only the expected number
of distinct ones its B tokens choose, E * (1 - (1 - k/E)^B); of the embedding table only its B rows) plus the whole
KV cache; `gap` is measured time over the floor.

`memory_accounting` counts what a decode step holds (weights, folded maps, cache, rope tables, logits); its sum is
reported beside the peak memory measured over the decode steps alone.

`capacity` answers "what fits in a memory budget" from the model's own numbers:
    memory(B, S) = weights + B*S*(kv_bytes_per_token + step_bytes_per_token) + S*rope_bytes_per_position + reserve
where step_bytes_per_token is the transient memory of one decode step per cached token, measured on CUDA from two
eager steps at batch 1 (0 on CPU, where there is no allocator peak to measure).
"""

from __future__ import annotations

import csv
import gc
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from litgpt.config import Config
from litgpt.generate.base import (
    DECODE_MODES,
    DecodeStep,
    Sampler,
    SamplingParams,
    peak_memory_bytes,
    prefill,
    resolve_dtype,
)
from litgpt.generate.session import DecodeSession
from litgpt.kernels import set_kernels
from litgpt.kv_cache import check_kv_cache_dtype, kv_cache_bytes_per_token
from litgpt.checkpoint import SkipInit
from litgpt.model import GPT, init_weights
from litgpt.moe import Experts
from litgpt.utils import command_line, format_number, parse_device, positive_ints, synchronize

BANDWIDTH = 3.0e12  # measured H100 copy bandwidth, bytes/s


@torch.inference_mode()
def benchmark_decode(
    model: GPT,
    batch_size: int,
    context_length: int,
    decode_steps: int = 100,
    warmup: int = 10,
    mode: str = "compile",
    params: SamplingParams = SamplingParams(temperature=0.0),
    profile_path: Optional[Path] = None,
    fold: bool = True,
    kernels: bool = True,
    kv_cache_dtype: Optional[str] = None,
) -> dict:
    """Time `decode_steps` steps (after `warmup` untimed ones) of batch_size rows at positions ending at
    context_length - 1, the cache in the model's dtype or kv_cache_dtype ("fp8_e4m3"). Returns tokens/s, ms/step,
    prefill time, peak memory, KV-cache bytes and the floor."""
    if batch_size < 1 or decode_steps < 1 or warmup < 0:
        raise ValueError("batch_size and decode_steps must be >= 1 and warmup >= 0")
    if context_length > model.config.block_size:
        raise ValueError(
            f"context_length {context_length} exceeds the model's block_size {model.config.block_size}; "
            "build the config with a larger block_size (e.g. Config.from_name(name, block_size=...))"
        )
    prompt_len = context_length - decode_steps - warmup
    if prompt_len < 1:
        raise ValueError(f"context_length {context_length} leaves no room for {warmup} + {decode_steps} steps")
    device = model.lm_head.weight.device
    model.clear_kv_cache()
    model.max_seq_length = context_length
    session = DecodeSession(model, batch_size, context_length, params, mode, kernels, fold=fold,
                            kv_cache_dtype=kv_cache_dtype)
    sampler, step = session.sampler, session.step
    generator = torch.Generator().manual_seed(0)
    prompts = list(torch.randint(model.config.vocab_size, (batch_size, prompt_len), generator=generator))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0 = time.perf_counter()
    token, input_pos = prefill(model, prompts, sampler)
    synchronize(device)
    prefill_s = time.perf_counter() - t0
    prefill_peak, _ = peak_memory_bytes(device)
    if device.type == "cuda":  # from here on the peak is the decode steps' (their graph or compile included)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):  # compilation and graph capture happen here
        token = step(token, input_pos)
        input_pos = input_pos + 1
    synchronize(device)
    warmup_s = time.perf_counter() - t0 - prefill_s
    t1 = time.perf_counter()
    for _ in range(decode_steps):
        token = step(token, input_pos)
        input_pos = input_pos + 1
    synchronize(device)
    elapsed = time.perf_counter() - t1
    if profile_path is not None:
        _profile(step, token, input_pos - decode_steps, profile_path)
    accounted = memory_accounting(model, batch_size)
    step_bytes = step_weight_bytes(model, batch_size)
    kv_bytes = accounted["kv_cache"]
    floor_ms = (step_bytes + kv_bytes) / BANDWIDTH * 1e3
    ms_per_step = elapsed / decode_steps * 1e3
    decode_peak, kind = peak_memory_bytes(device)
    return dict(
        model=model.config.name,
        mode=mode,
        fold=fold,
        batch=batch_size,
        context=context_length,
        dtype=str(model.lm_head.weight.dtype).removeprefix("torch."),
        kv_cache_dtype=kv_cache_dtype,
        decode_tokens_per_s=batch_size * decode_steps / elapsed,
        ms_per_step=ms_per_step,
        time_to_first_token_s=prefill_s,
        warmup_s=warmup_s,
        peak_memory_bytes=max(prefill_peak, decode_peak),
        decode_peak_memory_bytes=decode_peak,
        peak_memory_kind=kind,
        accounted_bytes=sum(accounted.values()),
        accounted=accounted,
        kv_cache_bytes=kv_bytes,
        weight_bytes=accounted["weights"],
        step_weight_bytes=step_bytes,
        floor_ms=floor_ms,
        gap=ms_per_step / floor_ms,
    )


def expected_distinct_experts(n_expert: int, per_token: int, tokens: int) -> float:
    """Expected number of distinct experts that `tokens` tokens choose, each `per_token` of `n_expert` at random:
    E * (1 - (1 - k/E)^B) (an expert is missed by one token with probability 1 - k/E)."""
    return n_expert * (1.0 - (1.0 - per_token / n_expert) ** tokens)


def step_weight_bytes(model: GPT, batch_size: int) -> float:
    """Bytes of weights one decode step of batch_size tokens reads: every parameter once, except each MoE layer's
    routed experts, of which the step reads the expected number of distinct ones its tokens choose
    (`expected_distinct_experts`), and the embedding table (when not tied to lm_head), of which it reads one row a
    token. Shared experts, dense layers, routers, attention, norms and lm_head count whole."""
    total = float(sum(p.numel() * p.element_size() for p in model.parameters()))
    c = model.config
    for experts in (m for m in model.modules() if isinstance(m, Experts)):
        routed = sum(p.numel() * p.element_size() for p in experts.parameters())
        total -= routed * (1.0 - expected_distinct_experts(c.n_expert, c.n_expert_per_token, batch_size) / c.n_expert)
    wte = model.transformer.wte.weight
    if wte is not model.lm_head.weight:
        total -= (wte.size(0) - min(batch_size, wte.size(0))) * wte.size(1) * wte.element_size()
    return total


def memory_accounting(model: GPT, batch_size: int) -> dict[str, int]:
    """The memory a decode step of batch_size rows holds by our own count, in bytes: the weights, the folded decode
    maps (`litgpt.fold`), the KV cache, the other buffers (rope tables) and the step's largest transient, its logits
    (B x padded vocab, in the model's dtype and again in float32 for the sampler)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    folded = sum(b.numel() * b.element_size() for block in model.transformer.h if block.folded is not None
                 for b in block.folded.buffers())
    kv_cache = model.kv_cache_bytes()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    logits = batch_size * model.config.padded_vocab_size * (model.lm_head.weight.element_size() + 4)
    return dict(weights=weights, folded=folded, kv_cache=kv_cache, other_buffers=buffers - folded - kv_cache,
                transients=logits)


def _profile(step: DecodeStep, token: torch.Tensor, input_pos: torch.Tensor, path: Path, steps: int = 5) -> None:
    """Write the top kernels of `steps` decode steps (by device time) to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            token = step(token, input_pos)
            input_pos = input_pos + 1
        synchronize(token.device)
    sort_by = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort_by, row_limit=25))


# ---------------------------------------------------------------------------------------- `litgpt benchmark decode`
DEFAULT_MODELS = ["pythia-160m", "pythia-160m-gqa", "pythia-160m-mqa", "pythia-160m-mla"]
RESULTS_COLUMNS = (
    "model", "batch", "context", "mode", "kernels", "dtype", "kv_cache_dtype", "tokens_per_s", "ms_per_step",
    "floor_ms", "gap", "step_weight_bytes", "kv_bytes_per_token", "kv_cache_bytes", "peak_memory_bytes", "decode_peak_memory_bytes",
    "accounted_bytes", "status",
)
CAPACITY_COLUMNS = (
    "model", "dtype", "kv_cache_dtype", "memory_budget_bytes", "weights_bytes", "kv_bytes_per_token",
    "step_bytes_per_token", "step_bytes_per_row", "step_bytes_fixed", "rope_bytes_per_position", "reserve_bytes", "longest_context_batch1",
    "fit_context", "largest_batch", "verified", "verified_peak_bytes", "verified_batch", "verified_batch_peak_bytes",
)
PROBES = ((1, 1024), (1, 4096), (2, 1024))  # (batch, context) of the eager steps that measure a step's transients


def benchmark_decode_command(
    models: Optional[list[str]] = None,
    batch_sizes: Optional[list[int]] = None,
    context_lengths: Optional[list[int]] = None,
    mode: Optional[str] = None,
    kernels: bool = True,
    decode_steps: int = 50,
    warmup: int = 5,
    precision: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
    device: Optional[str] = None,
    memory_budget_gib: float = 16.0,
    reserve_gib: float = 1.0,
    fit_batch_at_context: Optional[int] = None,
    seed: int = 0,
    out_dir: Path = Path("out/benchmark/decode"),
) -> dict:
    """End-to-end decode throughput versus context length and batch per model, KV bytes per token, and the
    longest context (batch 1) and largest batch (at one context) that fit a memory budget.

    Every model gets random weights, built in the target dtype on the device; a model whose block_size is below
    the longest context gets it raised.
    Writes results.csv, throughput.png, capacity.csv and summary.md under out_dir (results.csv after every row).

    Args:
        models: named configs (default: pythia-160m, pythia-160m-gqa, pythia-160m-mqa, pythia-160m-mla).
        batch_sizes: batch sizes (default: 1 and 8).
        context_lengths: cache lengths to decode at (default: 1024 to 8192, powers of two).
        mode: the decode step's mode: eager, compile, max-autotune or cuda_graph (default: compile on CUDA,
            eager on CPU).
        kernels: use the Triton decode-attention kernels where they apply (CUDA); false runs the torch path.
        decode_steps: timed decode steps per configuration.
        warmup: untimed decode steps first (compilation and graph capture happen here).
        precision: weight and cache dtype as in `litgpt generate`: bf16-true, 16-true, 32-true, ... (default:
            bf16 on CUDA, float32 on CPU).
        kv_cache_dtype: the KV cache's format: null (the precision's dtype) or fp8_e4m3 (e4m3 values with float32
            scales, `litgpt.kv_cache`); the bytes per token, the floor and the capacity table count it.
        device: cuda, cuda:N or cpu (default: cuda when available).
        memory_budget_gib: the memory budget of the capacity table, in GiB.
        reserve_gib: fixed memory held back from the budget for the CUDA workspace, allocator slack and logits.
        fit_batch_at_context: the context at which to report the largest batch that fits (default: the longest
            of context_lengths).
        seed: seed of the random weights.
        out_dir: where results.csv, throughput.png, capacity.csv and summary.md go.
    """
    command = command_line(locals(), "litgpt benchmark decode")
    from tqdm import tqdm

    check_kv_cache_dtype(kv_cache_dtype)
    torch_device = parse_device(device)
    cuda = torch_device.type == "cuda"
    dtype = resolve_dtype(precision, torch_device)
    models = list(DEFAULT_MODELS if models is None else models)
    if not models or len(set(models)) != len(models):
        raise ValueError(f"--models must be a non-empty list of distinct model names, got {models}")
    base_configs = {name: Config.from_name(name) for name in models}  # unknown names fail here, before any work
    batch_sizes = positive_ints("batch_sizes", [1, 8] if batch_sizes is None else batch_sizes)
    context_lengths = positive_ints("context_lengths", [1024, 2048, 4096, 8192] if context_lengths is None
                                else context_lengths)
    mode = ("compile" if cuda else "eager") if mode is None else mode
    if mode not in DECODE_MODES or (mode == "cuda_graph" and not cuda):
        raise ValueError(f"--mode {mode!r} is not available on {torch_device.type}; choose one of "
                         f"{', '.join(m for m in DECODE_MODES if cuda or m != 'cuda_graph')}")
    if decode_steps < 1 or warmup < 0:
        raise ValueError(f"--decode_steps must be >= 1 and --warmup >= 0, got {decode_steps} and {warmup}")
    shortest = max(2, decode_steps + warmup + 1)
    if context_lengths[0] < shortest:
        raise ValueError(f"--context_lengths: {context_lengths[0]} is too short; a context must hold one prompt token "
                         f"plus warmup + decode_steps, so use >= {shortest} or lower --decode_steps/--warmup")
    if memory_budget_gib <= 0 or reserve_gib < 0:
        raise ValueError(f"--memory_budget_gib must be positive and --reserve_gib >= 0, got {memory_budget_gib} "
                         f"and {reserve_gib}")
    fit_context = context_lengths[-1] if fit_batch_at_context is None else fit_batch_at_context
    if fit_context < 1:
        raise ValueError(f"--fit_batch_at_context must be positive, got {fit_context}")

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    capacities: list[dict] = []
    raised: dict[str, int] = {}
    progress = tqdm(total=len(models) * len(batch_sizes) * len(context_lengths), desc="decode", unit="config")
    for name in models:
        block_size = max(base_configs[name].block_size, context_lengths[-1])
        if block_size > base_configs[name].block_size:
            raised[name] = base_configs[name].block_size
        probe_block = max([block_size] + [t for _, t in PROBES]) if cuda else block_size
        model = build_model(Config.from_name(name, block_size=probe_block), torch_device, dtype, kernels, seed)
        for batch in batch_sizes:
            for context in context_lengths:
                progress.set_postfix_str(f"{name} B={batch} T={context}")
                rows.append(measure(model, name, batch, context, mode, kernels, decode_steps, warmup, kv_cache_dtype))
                write_csv(rows, RESULTS_COLUMNS, out_dir / "results.csv")
                progress.update()
        capacities.append(capacity(model, name, memory_budget_gib, reserve_gib, fit_context, kv_cache_dtype))
        del model
        _free(torch_device)
    progress.close()
    if cuda:
        for cap in tqdm(capacities, desc="verify capacity", unit="model"):
            verify_capacity(cap, torch_device, dtype, kernels, seed, kv_cache_dtype)
    write_csv(capacities, CAPACITY_COLUMNS, out_dir / "capacity.csv")
    plot_throughput(rows, out_dir / "throughput.png")
    write_summary(rows, capacities, raised, torch_device, dtype, mode, kernels, decode_steps, warmup,
                  memory_budget_gib, command, out_dir / "summary.md", kv_cache_dtype)
    print(f"wrote {out_dir}/results.csv, throughput.png, capacity.csv, summary.md")
    return dict(results=rows, capacity=capacities)


def build_model(config: Config, device: torch.device, dtype: torch.dtype, kernels: bool, seed: int) -> GPT:
    """A GPT with random weights on `device` in `dtype`, decode kernels switched on or off. Built on the meta device
    and materialised in `dtype` where it runs, then initialised in place: no float32 copy anywhere (a 16B-parameter
    model would need 63 GB for one)."""
    with torch.device("meta"), SkipInit():
        model = GPT(config)
    model = model.to(dtype=dtype).to_empty(device=device)  # the Router keeps V3's bias in float32
    model.reset_rope_cache()  # on `device` now (built on the CPU while the weights were on meta)
    torch.manual_seed(seed)
    init_weights(model)
    model = model.to(dtype=dtype).eval()  # the weights are in place already; this casts the rope buffers as before
    set_kernels(model, kernels)
    return model


def measure(
    model: GPT, name: str, batch: int, context: int, mode: str, kernels: bool, decode_steps: int, warmup: int,
    kv_cache_dtype: Optional[str] = None,
) -> dict:
    """One (batch, context) row of results.csv; out of memory is recorded as a status and the run goes on."""
    device = model.lm_head.weight.device
    dtype = model.lm_head.weight.dtype
    per_token = kv_cache_bytes_per_token(model.config, dtype, kv_cache_dtype)
    row = dict(model=name, batch=batch, context=context, mode=mode, kernels=kernels,
               dtype=str(dtype).removeprefix("torch."), kv_cache_dtype=kv_cache_dtype, tokens_per_s=math.nan,
               ms_per_step=math.nan, floor_ms=math.nan, gap=math.nan, step_weight_bytes=step_weight_bytes(model, batch),
               kv_bytes_per_token=per_token,
               kv_cache_bytes=batch * context * per_token, peak_memory_bytes=math.nan,
               decode_peak_memory_bytes=math.nan, accounted_bytes=math.nan, status="ok")
    torch._dynamo.reset()  # each shape compiles its own static graph
    try:
        r = benchmark_decode(model, batch, context, decode_steps, warmup, mode, kernels=kernels,
                             kv_cache_dtype=kv_cache_dtype)
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
        return row
    finally:
        model.clear_kv_cache()
        _free(device)
    if r["kv_cache_bytes"] != row["kv_cache_bytes"]:
        raise RuntimeError(f"{name}: the cache holds {r['kv_cache_bytes']} bytes, not the {row['kv_cache_bytes']} "
                           "that kv_cache_bytes_per_token predicts")
    row.update(tokens_per_s=r["decode_tokens_per_s"], ms_per_step=r["ms_per_step"], floor_ms=r["floor_ms"],
               gap=r["gap"], accounted_bytes=r["accounted_bytes"])
    if device.type == "cuda":  # on CPU the only peak is the process RSS, which is not this configuration's
        row.update(peak_memory_bytes=r["peak_memory_bytes"], decode_peak_memory_bytes=r["decode_peak_memory_bytes"])
    return row


# ---------------------------------------------------------------------------------------- capacity
def capacity(model: GPT, name: str, memory_budget_gib: float, reserve_gib: float, fit_context: int,
             kv_cache_dtype: Optional[str] = None) -> dict:
    """The longest batch-1 context and the largest batch at fit_context that the budget holds, by the formula
    weights + B*S*(kv + step_per_token) + B*step_per_row + step_fixed + S*rope + reserve <= budget."""
    dtype = model.lm_head.weight.dtype
    config = model.config
    per_token, per_row, fixed = measure_step_bytes(model, kv_cache_dtype)
    cap = dict(
        model=name, dtype=str(dtype).removeprefix("torch."), kv_cache_dtype=kv_cache_dtype,
        memory_budget_bytes=int(memory_budget_gib * 2**30),
        weights_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        kv_bytes_per_token=kv_cache_bytes_per_token(config, dtype, kv_cache_dtype), step_bytes_per_token=per_token,
        step_bytes_per_row=per_row, step_bytes_fixed=fixed,
        rope_bytes_per_position=2 * config.rope_n_elem * 4,  # float32 cos and sin tables, one row per position
        reserve_bytes=int(reserve_gib * 2**30), fit_context=fit_context, verified="skipped (CPU)",
        verified_peak_bytes="", verified_batch="skipped (CPU)", verified_batch_peak_bytes="",
    )
    cap["longest_context_batch1"] = longest_context(cap)
    cap["largest_batch"] = largest_batch(cap, fit_context)
    return cap


def memory_needed(cap: dict, batch: int, context: int) -> int:
    """Bytes the capacity formula gives for a cache of batch x context tokens."""
    per_token = cap["kv_bytes_per_token"] + cap["step_bytes_per_token"]
    return (cap["weights_bytes"] + batch * context * per_token + batch * cap["step_bytes_per_row"]
            + cap["step_bytes_fixed"] + context * cap["rope_bytes_per_position"] + cap["reserve_bytes"])


def longest_context(cap: dict) -> int:
    """The largest S with memory_needed(cap, 1, S) <= budget (0 if none)."""
    free = cap["memory_budget_bytes"] - memory_needed(cap, 1, 0)
    per_position = cap["kv_bytes_per_token"] + cap["step_bytes_per_token"] + cap["rope_bytes_per_position"]
    return max(0, free // per_position)


def largest_batch(cap: dict, context: int) -> int:
    """The largest B with memory_needed(cap, B, context) <= budget (0 if none)."""
    free = cap["memory_budget_bytes"] - memory_needed(cap, 0, context)
    per_row = context * (cap["kv_bytes_per_token"] + cap["step_bytes_per_token"]) + cap["step_bytes_per_row"]
    return max(0, free // per_row)


@torch.inference_mode()
def decode_one_step(model: GPT, batch: int, context: int, kv_cache_dtype: Optional[str] = None) -> int:
    """Set a zeroed cache of batch x context tokens, run one eager decode step at its last position and return
    the peak CUDA memory allocated meanwhile (weights, cache, rope tables and the step's transients)."""
    device = model.lm_head.weight.device
    model.clear_kv_cache()
    _free(device)
    model.max_seq_length = context
    model.set_kv_cache(batch, context, kv_cache_dtype=kv_cache_dtype)
    for block in model.transformer.h:
        for buffer in block.attn.kv_cache.buffers():
            buffer.zero_()
    sampler = Sampler(SamplingParams(temperature=0.0), model.config.vocab_size, batch, device)
    token = torch.zeros(batch, 1, dtype=torch.int64, device=device)  # (B, 1)
    input_pos = torch.full((batch, 1), context - 1, dtype=torch.int64, device=device)  # (B, 1)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    DecodeStep(model, sampler, "eager")(token, input_pos)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    model.clear_kv_cache()
    return peak


def measure_step_bytes(model: GPT, kv_cache_dtype: Optional[str] = None) -> tuple[int, int, int]:
    """A decode step's memory beyond weights, cache and rope tables, fitted as per_token*B*S + per_row*B + fixed
    from eager steps at the (batch, context) pairs of PROBES. (0, 0, 0) on CPU: no allocator peak to read."""
    device = model.lm_head.weight.device
    if device.type != "cuda":
        return 0, 0, 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_cache_bytes_per_token(model.config, model.lm_head.weight.dtype, kv_cache_dtype)
    rope = 2 * model.config.rope_n_elem * 4
    extra = {(b, t): decode_one_step(model, b, t, kv_cache_dtype) - weights - b * t * kv - t * rope for b, t in PROBES}
    (b0, t0), (_, t1), (b2, _) = PROBES
    per_token = max(0.0, (extra[(b0, t1)] - extra[(b0, t0)]) / (b0 * (t1 - t0)))
    per_row = max(0.0, (extra[(b2, t0)] - extra[(b0, t0)]) / (b2 - b0) - per_token * t0)
    fixed = max(0.0, extra[(b0, t0)] - b0 * (per_token * t0 + per_row))
    return math.ceil(per_token), math.ceil(per_row), math.ceil(fixed)


def verify_capacity(cap: dict, device: torch.device, dtype: torch.dtype, kernels: bool, seed: int,
                    kv_cache_dtype: Optional[str] = None) -> None:
    """On CUDA, with the allocator capped at the budget, really allocate the batch-1 longest-context cache (then
    the largest batch at fit_context) and run one decode step; record whether it fit and its peak."""
    if device.index is None:  # the allocator's cap needs an explicit device index
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    checks = (("verified", "verified_peak_bytes", 1, cap["longest_context_batch1"]),
              ("verified_batch", "verified_batch_peak_bytes", cap["largest_batch"], cap["fit_context"]))
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap["memory_budget_bytes"] / total), device)
    try:
        for flag, peak_key, batch, context in checks:
            if batch < 1 or context < 1:
                cap[flag] = "nothing fits"
                continue
            _free(device)
            model = None
            try:
                block_size = max(context, Config.from_name(cap["model"]).block_size)
                config = Config.from_name(cap["model"], block_size=block_size)
                model = build_model(config, device, dtype, kernels, seed)
                peak = decode_one_step(model, batch, context, kv_cache_dtype)
                cap[peak_key] = peak
                cap[flag] = "true" if peak <= cap["memory_budget_bytes"] else "false"
            except torch.OutOfMemoryError:
                cap[flag] = "false"
                cap[peak_key] = "out of memory"
            finally:
                del model
                _free(device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- outputs
def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_throughput(rows: list[dict], path: Path) -> None:
    """Decode tokens/s versus context (log2 x), one line per (model, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5))
    for name in dict.fromkeys(r["model"] for r in rows):
        for batch in sorted({r["batch"] for r in rows}):
            points = [(r["context"], r["tokens_per_s"]) for r in rows
                      if (r["model"], r["batch"]) == (name, batch) and r["status"] == "ok"]
            if points:
                x, y = zip(*sorted(points))
                ax.plot(x, y, marker="o", label=f"{name}, batch {batch}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (cached tokens)")
    ax.set_ylabel("decode tokens / s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    r = rows[0]
    ax.set_title(f"decode throughput, {r['mode']}, kernels {r['kernels']}, {r['dtype']}, "
                 f"KV cache {r['kv_cache_dtype'] or r['dtype']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_summary(
    rows: list[dict], capacities: list[dict], raised: dict[str, int], device: torch.device, dtype: torch.dtype,
    mode: str, kernels: bool, decode_steps: int, warmup: int, memory_budget_gib: float, command: str, path: Path,
    kv_cache_dtype: Optional[str] = None,
) -> None:
    """Markdown: setup, the throughput table, the capacity table with its formula, and notes."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    lines = [
        "# Decode benchmark",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; device: {name}; "
        f"torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}; "
        f"KV cache {kv_cache_dtype or str(dtype).removeprefix('torch.')}; mode {mode}; kernels {kernels}",
        f"- command: `{command}`",
        f"- timing: {decode_steps} decode steps after {warmup} warmup steps at the last positions of a cache filled "
        "by a prefill of random tokens; random weights",
    ]
    if raised:
        lines.append("- block_size raised to the longest context (random weights, so positions past the trained "
                     "context cost the same): " + ", ".join(f"{m} (was {b})" for m, b in raised.items()))
    lines += [
        "",
        "## Throughput",
        "",
        "| model | batch | context | tokens/s | ms/step | floor ms | gap | KV bytes/token | KV cache MiB "
        "| accounted MiB | decode peak MiB | peak MiB | status |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        status = "ok" if r["status"] == "ok" else f"**{r['status'].upper()}**"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['context']} | {format_number(r['tokens_per_s'], ',.0f')} "
            f"| {format_number(r['ms_per_step'], '.4g')} | {format_number(r['floor_ms'], '.4g')} | {format_number(r['gap'], '.1f')} "
            f"| {r['kv_bytes_per_token']:,} | {r['kv_cache_bytes'] / 2**20:,.1f} "
            f"| {format_number(r['accounted_bytes'] / 2**20, ',.0f')} "
            f"| {format_number(r['decode_peak_memory_bytes'] / 2**20, ',.0f')} "
            f"| {format_number(r['peak_memory_bytes'] / 2**20, ',.0f')} | {status} |"
        )
    fit_context = capacities[0]["fit_context"]
    lines += [
        "",
        f"## What fits in {memory_budget_gib:g} GiB",
        "",
        f"| model | weights MiB | KV bytes/token | step bytes/token | longest context (batch 1) | verified "
        f"| largest batch at {fit_context} | verified |",
        "|" + "---|" * 8,
    ]
    for c in capacities:
        lines.append(
            f"| {c['model']} | {c['weights_bytes'] / 2**20:,.1f} | {c['kv_bytes_per_token']:,} "
            f"| {c['step_bytes_per_token']:,} | {c['longest_context_batch1']:,} | {_verified(c, 'verified')} "
            f"| {c['largest_batch']:,} | {_verified(c, 'verified_batch')} |"
        )
    reserve_gib = capacities[0]["reserve_bytes"] / 2**30
    lines += [
        "",
        "Formula (all in bytes, B = batch, S = context):",
        "`weights + B*S*(kv_bytes_per_token + step_bytes_per_token) + B*step_bytes_per_row + step_bytes_fixed"
        f" + S*rope_bytes_per_position + reserve <= budget`, with reserve = {reserve_gib:g} GiB (workspace, "
        "allocator slack), kv_bytes_per_token = n_layer * (2 * n_query_groups * head_size, or kv_lora_rank + "
        "qk_rope_head_dim for MLA) * element size (fp8_e4m3: 1 byte a value plus float32 scales, the rope key in the "
        "model's dtype; `litgpt.kv_cache.kv_cache_bytes_per_token`), rope_bytes_per_position = 2 * rope_n_elem * 4 (float32 cos/sin).",
        "",
        "- step_bytes_*: transients of one eager decode step (logits, scores, sampler), fitted on CUDA from steps at "
        f"(batch, context) = {', '.join(str(p) for p in PROBES)}; see capacity.csv."
        if cuda else
        "- step_bytes_*: 0 here: a step's transients are only measured on CUDA (CPU has no allocator peak).",
        "- verified: the cache was really allocated with `torch.cuda.set_per_process_memory_fraction(budget / total)` "
        "and one eager decode step ran; true when it did not run out of memory and `max_memory_allocated` <= budget."
        if cuda else
        "- verified: **skipped on CPU** (no allocator cap to test against); the capacity numbers are the formula only.",
        "",
        "## Notes",
        "",
        "- tokens/s = batch * decode_steps / time; ms/step the time of one step (all rows).",
        f"- floor ms: (the step's weight bytes + whole KV cache) / {BANDWIDTH / 1e12:g} TB/s (H100 copy bandwidth); "
        "gap = ms/step / floor ms. The step's weight bytes (step_weight_bytes in results.csv) count every weight once, "
        "except a mixture of experts' routed experts, of which B tokens choosing k of E read E * (1 - (1 - k/E)^B) "
        "distinct ones in expectation, and the embedding table, of which a step reads B rows." + ("" if cuda else " On CPU the floor is an H100's, not this machine's."),
        "- accounted MiB: our own count of what a decode step holds (`memory_accounting`): weights + folded decode "
        "maps + KV cache + rope tables + the step's logits (B x padded vocab, in the model's dtype and in float32).",
        "- decode peak MiB: `torch.cuda.max_memory_allocated` over the decode steps alone (the peak is reset after "
        "the prefill; graph capture or compilation included); peak MiB: over prefill and decode." if cuda else
        "- peak MiB and decode peak MiB: not measured on CPU (only the process RSS exists, which is not one "
        "configuration's): nan in "
        "results.csv, empty here.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _verified(cap: dict, key: str) -> str:
    return {"true": "yes", "false": "**NO**"}.get(cap[key], cap[key])
