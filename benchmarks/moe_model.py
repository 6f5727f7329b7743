"""A DeepSeek-MoE model at full size with random bf16 weights on one GPU: our prefill (tokens/s and MFU) and a kernel
profile of decode steps, then HF transformers' `generate` on the same architecture. Each subcommand writes one JSON.

    python3 benchmarks/moe_model.py ours --out FILE [--model DeepSeek-V2-Lite] [--prefill 1x4096 32x4096]
                                         [--profile_batches 1 8] [--profile_context 1024] [--profile_dir DIR]
    python3 benchmarks/moe_model.py hf --out FILE [--model DeepSeek-V2-Lite] [--shapes 1x1024 8x1024 ...]
                                       [--caches dynamic static] [--new_tokens 32] [--deadline_s 200]
    python3 benchmarks/moe_model.py checkpoint --out DIR --tokenizer_dir DIR [--model DeepSeek-V2-Lite]

What is measured:
- prefill: `litgpt.generate.base.prefill` of random prompts (B x T) into a fresh cache, after one untimed run of the
  same shape (kernel choice, cuBLAS and Triton warm-up). MFU = FLOPs / time / peak, with FLOPs = 2 x (the weights one
  token multiplies: every weight except the embedding table, the routed experts at k of E) x tokens + causal
  attention 2 x n_layer x n_head x (qk head width + v head width) x T^2 / 2 per row, and peak the bf16 dense rate
  (989 TFLOP/s on H100 and H200; none recorded for other devices).
- experts: one MoE layer's routed experts at decode batches (`grouped_experts`, the Triton kernels) beside their
  torch reference (which gathers each pair's weights) and, where it runs, `torch._grouped_mm` ("grouped"), with random
  routing: microseconds per call (CUDA events, median of 20 after 3 untimed) and the bandwidth of the bytes the call
  must read (the distinct chosen experts' weights).
- profile: `benchmark_decode`'s top kernels by device time over 5 captured decode steps at each batch, and the top
  kernels of one prefill of the first `--prefill` shape.
- checkpoint (nothing timed): a random-init bf16 checkpoint of the model for `litgpt generate` and `litgpt benchmark
  generate`, with a stand-in tokenizer: the given one (e.g. Pythia's) with `<extra_N>` tokens added up to the
  model's vocabulary, so that every id a random model samples decodes.
- hf: `DeepseekV2ForCausalLM.generate` (greedy, `new_tokens` forced) from the model's published config.json with
  random weights built in bf16 on the GPU; decode tokens/s = B x (new_tokens - 1) / (t(new_tokens) - t(1)), so the
  prefill cancels. The static cache runs without transformers' auto-compile (`disable_compile`): it would compile
  again for each cache length, inside the timed calls. A shape that runs out of memory or past the deadline is
  recorded as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from a checkout

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core FLOP/s (SXM)


def device_info() -> dict:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return dict(device=name, torch=torch.__version__, command=" ".join(["python3"] + sys.argv), peak_flops=peak)


def shape(text: str) -> tuple[int, int]:
    batch, tokens = text.lower().split("x")
    return int(batch), int(tokens)


def prefill_flops(model, batch: int, tokens: int) -> float:
    """Multiply-add FLOPs x 2 of a prefill of batch x tokens: the weights a token multiplies, plus causal attention."""
    from litgpt.moe import Experts

    c = model.config
    per_token = sum(p.numel() for p in model.parameters()) - model.transformer.wte.weight.numel()
    for experts in (m for m in model.modules() if isinstance(m, Experts)):
        routed = sum(p.numel() for p in experts.parameters())
        per_token -= routed * (1 - c.n_expert_per_token / c.n_expert)
    if c.latent_attention:
        qk, v = c.mla.qk_nope_head_dim + c.mla.qk_rope_head_dim, c.mla.v_head_dim
    else:
        qk = v = c.head_size
    attention = 2 * c.n_layer * c.n_head * (qk + v) * tokens * tokens / 2 * batch
    return 2 * per_token * batch * tokens + attention


def ours(args: argparse.Namespace) -> None:
    from litgpt.benchmark.decode import benchmark_decode, build_model
    from litgpt.config import Config
    from litgpt.generate.base import Sampler, SamplingParams, prefill

    info = device_info()
    device = torch.device("cuda")
    longest = max([t for _, t in map(shape, args.prefill)] + [args.profile_context])
    config = Config.from_name(args.model, block_size=max(longest, Config.from_name(args.model).block_size))
    t0 = time.perf_counter()
    model = build_model(config, device, torch.bfloat16, True, 0)
    torch.cuda.synchronize()
    result = dict(info, model=args.model, build_s=time.perf_counter() - t0,
                  params=sum(p.numel() for p in model.parameters()),
                  weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()), prefill=[], experts=[],
                  profile=[])
    generator = torch.Generator().manual_seed(0)
    for text in args.prefill:
        B, T = shape(text)
        row = dict(batch=B, tokens=T)
        try:
            with torch.inference_mode():
                model.max_seq_length = T
                model.set_kv_cache(B, T)
                sampler = Sampler(SamplingParams(temperature=0.0), config.vocab_size, B, device)
                prompts = list(torch.randint(config.vocab_size, (B, T), generator=generator))
                prefill(model, prompts, sampler)  # untimed: the same shape once
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t1 = time.perf_counter()
                prefill(model, prompts, sampler)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - t1
            flops = prefill_flops(model, B, T)
            row.update(seconds=seconds, tokens_per_s=B * T / seconds, flops=flops, tflops_per_s=flops / seconds / 1e12,
                       mfu=None if info["peak_flops"] is None else flops / seconds / info["peak_flops"],
                       peak_memory_bytes=torch.cuda.max_memory_allocated(), status="ok")
            if text == args.prefill[0]:  # where the prefill's time goes: its top kernels by device time
                profile = Path(args.profile_dir) / f"prefill_profile_{B}x{T}.txt"
                with torch.inference_mode():
                    profile_prefill(model, prompts, sampler, profile)
                row["profile"] = str(profile)
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        finally:
            model.clear_kv_cache()
            torch.cuda.empty_cache()
        result["prefill"].append(row)
        print(json.dumps(row), flush=True)
    for batch in args.expert_batches:
        row = time_experts(model, batch)
        result["experts"].append(row)
        print(json.dumps(row), flush=True)
    for batch in args.profile_batches:
        path = Path(args.profile_dir) / f"decode_profile_b{batch}_t{args.profile_context}.txt"
        r = benchmark_decode(model, batch, args.profile_context, decode_steps=20, warmup=3, mode="cuda_graph",
                             profile_path=path)
        row = {k: r[k] for k in ("batch", "context", "decode_tokens_per_s", "ms_per_step", "floor_ms", "gap",
                                 "step_weight_bytes", "kv_cache_bytes", "peak_memory_bytes")}
        row["profile"] = str(path)
        result["profile"].append(row)
        print(json.dumps(row), flush=True)
        model.clear_kv_cache()
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(result, indent=2))


def profile_prefill(model, prompts: list, sampler, path: Path) -> None:
    """Write the top kernels (by device time) of one prefill of `prompts` to `path`."""
    from torch.profiler import ProfilerActivity, profile

    from litgpt.generate.base import prefill

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill(model, prompts, sampler)
        torch.cuda.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))


def cuda_time_us(function, repeats: int = 20, warmup: int = 3) -> float:
    """Median microseconds of `function()` by CUDA events."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def time_experts(model, batch: int) -> dict:
    """One MoE layer's routed experts for `batch` tokens routed at random: the kernels, the torch reference and the
    grouped GEMM path, in microseconds and GB/s of the distinct chosen experts' bytes."""
    from litgpt.kernels.moe_grouped import grouped_experts, grouped_experts_reference, kernel_applies
    from litgpt.moe import Experts

    experts = next(m for m in model.modules() if isinstance(m, Experts))
    c = model.config
    generator = torch.Generator().manual_seed(batch)
    indices = torch.stack([torch.randperm(c.n_expert, generator=generator)[: c.n_expert_per_token]
                           for _ in range(batch)]).cuda()  # (B, k)
    weights = torch.rand(batch, c.n_expert_per_token, generator=generator).cuda()  # (B, k)
    x = torch.randn(batch, c.n_embd, generator=generator).to(device="cuda", dtype=torch.bfloat16)  # (B, C)
    per_expert = sum(p[0].numel() * p.element_size() for p in experts.parameters())
    read = indices.unique().numel() * per_expert
    tensors = (x, experts.fc_weight, experts.proj_weight, experts.fc_bias, experts.proj_bias)
    row = dict(batch=batch, distinct_experts=indices.unique().numel(), bytes_read=read,
               kernels_apply=kernel_applies(*tensors, indices.numel()))
    paths = {"kernels": lambda: grouped_experts(*tensors, weights, indices),
             "reference": lambda: grouped_experts_reference(*tensors, weights, indices)}
    if experts.grouped_mm_applies(x):
        experts_path = experts.path
        paths["grouped"] = lambda: (setattr(experts, "path", "grouped"), experts(x, weights, indices))
    try:
        for name, function in paths.items():
            us = cuda_time_us(function)
            row[f"{name}_us"] = us
            row[f"{name}_gb_per_s"] = read / us / 1e3
    finally:
        if "grouped" in paths:
            experts.path = experts_path
    return row


def hf(args: argparse.Namespace) -> None:
    import transformers

    from litgpt.configs.deepseek import HF_CONFIG_JSON

    start = time.perf_counter()
    info = device_info()
    fields = {k: v for k, v in HF_CONFIG_JSON[args.model].items() if k not in ("architectures", "_name_or_path")}
    config_class = transformers.AutoConfig.for_model(fields.pop("model_type")).__class__
    config = config_class(**fields)
    model_class = getattr(transformers, HF_CONFIG_JSON[args.model]["architectures"][0])
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 on the GPU: no float32 copy
    try:
        with torch.device("cuda"):
            model = model_class(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    torch.cuda.synchronize()
    result = dict(info, model=args.model, transformers=transformers.__version__,
                  attention=getattr(model.config, "_attn_implementation", None), build_s=time.perf_counter() - start,
                  new_tokens=args.new_tokens, rows=[])

    def timed(ids: torch.Tensor, new: int, cache: str) -> float:
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if cache == "static":  # without the auto-compile, whose recompiles per cache length would be timed
            kwargs.update(cache_implementation="static", disable_compile=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    generator = torch.Generator().manual_seed(0)
    for cache in args.caches:
        for text in args.shapes:
            B, T = shape(text)
            row = dict(cache=cache, batch=B, context=T)
            if time.perf_counter() - start > args.deadline_s:
                row["status"] = "skipped: past the deadline"
            else:
                ids = torch.randint(config.vocab_size, (B, T), generator=generator).cuda()
                try:
                    timed(ids[:, :16], 2, cache)  # warm-up
                    first = timed(ids, 1, cache)
                    full = timed(ids, args.new_tokens, cache)
                    step = (full - first) / (args.new_tokens - 1)
                    row.update(prefill_s=first, ms_per_step=step * 1e3, decode_tokens_per_s=B / step,
                               peak_memory_bytes=torch.cuda.max_memory_allocated(), status="ok")
                except torch.OutOfMemoryError:
                    row["status"] = "out of memory"
                except Exception as error:  # noqa: BLE001 -- recorded: a transformers version may lack a cache kind
                    row["status"] = f"error: {type(error).__name__}: {str(error)[:200]}"
                torch.cuda.empty_cache()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


def checkpoint(args: argparse.Namespace) -> None:
    import shutil

    from tokenizers import Tokenizer

    from litgpt.benchmark.decode import build_model
    from litgpt.checkpoint import save_checkpoint
    from litgpt.config import Config

    out, source = Path(args.out), Path(args.tokenizer_dir)
    config = Config.from_name(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    save_checkpoint(build_model(config, device, torch.bfloat16, True, 0), out)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    missing = config.vocab_size - tokenizer.get_vocab_size()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(max(missing, 0))])
    tokenizer.save(str(out / "tokenizer.json"))
    for name in ("tokenizer_config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    print(json.dumps(dict(checkpoint=str(out), vocab_size=config.vocab_size, tokenizer_size=tokenizer.get_vocab_size())))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mine = commands.add_parser("ours")
    mine.add_argument("--prefill", nargs="+", default=["1x4096", "32x4096"])
    mine.add_argument("--expert_batches", nargs="*", type=int, default=[1, 8, 32, 64])
    mine.add_argument("--profile_batches", nargs="*", type=int, default=[1, 8])
    mine.add_argument("--profile_context", type=int, default=1024)
    mine.add_argument("--profile_dir", default=".")
    theirs = commands.add_parser("hf")
    theirs.add_argument("--shapes", nargs="+", default=["1x1024", "8x1024", "1x4096", "8x4096"])
    theirs.add_argument("--caches", nargs="+", default=["dynamic", "static"], choices=["dynamic", "static"])
    theirs.add_argument("--new_tokens", type=int, default=32)
    theirs.add_argument("--deadline_s", type=float, default=200.0)
    saved = commands.add_parser("checkpoint")
    saved.add_argument("--tokenizer_dir", required=True)
    for sub in (mine, theirs, saved):
        sub.add_argument("--model", default="DeepSeek-V2-Lite")
        sub.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "hf" and args.new_tokens < 2:
        parser.error("--new_tokens must be >= 2 (the decode rate is the difference of two runs)")
    {"ours": ours, "hf": hf, "checkpoint": checkpoint}[args.command](args)


if __name__ == "__main__":
    main()
