"""`litgpt benchmark pretrain`: tokens/s, MFU and peak memory of the real training step, per model config.

The step is `litgpt.pretrain.train_step`, the one `litgpt pretrain` runs (Fabric precision plugin, the optimizer
built as pretrain builds it, fused AdamW by default, gradient clipping, the divergence record, the same loss
function), on random token ids, which cost the same as real text. Peak memory is reset per configuration.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from litgpt.args import OptimizerArg, OptimizerSpec
from litgpt.config import Config
from litgpt.flops import flops_per_token, peak_flops
from litgpt.model import GPT, init_weights
from litgpt.training import Divergence, train_step
from litgpt.utils import atomic_write, synchronize

# AdamW with the benchmark's long-standing hyperparameters (they do not change the step's cost)
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.1}}


def benchmark_pretrain(
    models: Optional[list[str]] = None,
    micro_batch_size: int = 16,
    seq_len: int = 1024,
    compile: Optional[list[bool]] = None,
    precision: str = "bf16-mixed",
    warmup_steps: int = 5,
    steps: int = 20,
    out_dir: Path = Path("out/benchmark/pretrain"),
    profile: bool = False,
    compile_mode: str = "default",
    cudnn_attention: bool = True,
    optimizer: OptimizerArg = DEFAULT_OPTIMIZER,
    max_norm: Optional[float] = 1.0,
) -> list[dict]:
    """Time training steps (one micro-batch each, as with global = micro batch) and write results.json.

    Args:
        models: named configs (default: pythia-160m and its -gqa, -mqa, -mla variants).
        micro_batch_size: sequences per step.
        seq_len: tokens per sequence.
        compile: for each value, one run with/without torch.compile (default: [false, true]).
        precision: Fabric precision.
        warmup_steps: untimed steps first (compilation happens here).
        steps: timed steps.
        out_dir: where results.json goes.
        profile: also profile 3 steps per configuration and write the top CUDA kernels to profile_*.txt.
        compile_mode: torch.compile's mode for the compiled runs ("default", "max-autotune-no-cudagraphs", ...).
        cudnn_attention: let SDPA pick cuDNN attention on CUDA (false: FlashAttention or the other backends).
        optimizer: the optimizer, spelled as for `litgpt pretrain` (`--optimizer SGD --optimizer.lr 0.1`,
            `--optimizer.init_args.weight_decay 0.01`; default AdamW, lr 3e-4, weight_decay 0.1, fused on CUDA).
        max_norm: gradient-norm clipping threshold, as `litgpt pretrain --train.max_norm` (null: no clipping).
    """
    import lightning as L

    spec = OptimizerSpec.resolve(optimizer)
    modes = compile_modes()
    if compile_mode not in modes:
        raise ValueError(
            f"--compile_mode {compile_mode!r} is not a torch.compile mode; choose one of {', '.join(modes)}"
        )
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"--max_norm must be positive or null (no clipping), got {max_norm}")

    models = models or ["pythia-160m", "pythia-160m-gqa", "pythia-160m-mqa", "pythia-160m-mla"]
    configs = {name: Config.from_name(name) for name in models}  # an unknown name fails here, before any run
    compile = [False, True] if compile is None else compile
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    fabric = L.Fabric(devices=1, precision=precision)
    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<18} {'compile':>7} {'tokens/s':>10} {'MFU':>6} {'step ms':>8} {'peak GiB':>9} {'loss':>7}")
    for name in models:
        for use_compile in compile:
            profile_path = out_dir / f"profile_{name}_{'compiled' if use_compile else 'eager'}.txt" if profile else None
            rows.append(_run(fabric, configs[name], micro_batch_size, seq_len, use_compile, warmup_steps,
                             steps, profile_path, compile_mode, optimizer=spec, max_norm=max_norm))
            r = rows[-1]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            print(f"{name:<18} {str(use_compile):>7} {r['tokens_per_sec']:>10,.0f} {mfu:>6} {r['step_ms']:>8.1f} "
                  f"{r['peak_memory_gib']:>9.2f} {r['final_loss']:>7.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                torch=torch.__version__, precision=precision, micro_batch_size=micro_batch_size, seq_len=seq_len,
                compile_mode=compile_mode, cudnn_attention=cudnn_attention, optimizer=spec.as_dict(),
                max_norm=max_norm)
    results = json.dumps(dict(meta=meta, rows=rows), indent=2)
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(results, encoding="utf-8"))
    print(f"wrote {out_dir / 'results.json'}")
    return rows


def compile_modes() -> list[str]:
    """The modes this torch's `torch.compile(mode=...)` takes (inductor's list; the long-standing four if it cannot
    be read)."""
    try:
        from torch._inductor import list_mode_options

        return list(list_mode_options())
    except (ImportError, AttributeError):
        return ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def _run(
    fabric: Any, config: Config, batch: int, seq_len: int, use_compile: bool, warmup: int, steps: int,
    profile_path: Optional[Path] = None,
    compile_mode: str = "default",
    optimizer: Optional[OptimizerSpec] = None,
    max_norm: Optional[float] = 1.0,
) -> dict:
    """Time `warmup + steps` training steps of one configuration (the first `warmup` untimed); its results row."""
    optimizer = optimizer or OptimizerSpec.resolve(DEFAULT_OPTIMIZER)
    torch.manual_seed(0)
    model = GPT(config)
    init_weights(model)
    model.max_seq_length = seq_len
    if use_compile:
        model = torch.compile(model, mode=compile_mode)
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(optimizer.build(model.parameters(), fabric.device))
    data = torch.randint(0, config.vocab_size, (warmup + steps, batch, seq_len + 1), device=fabric.device)
    cuda = fabric.device.type == "cuda"
    if cuda:
        synchronize(fabric.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    divergence = Divergence.for_run(fabric, max_norm)

    def step(i: int) -> torch.Tensor:
        """Training step i: one micro-batch per optimizer step (accumulation 1), as pretrain with global = micro."""
        return train_step(fabric, model, opt, iter((data[i],)), 1, max_norm, divergence, i + 1)

    for i in range(warmup + steps):
        if i == warmup:
            synchronize(fabric.device)
            start = time.perf_counter()
        loss = step(i)
    final_loss = loss.item()  # syncs
    seconds = time.perf_counter() - start
    bad_step = int(divergence.first_bad.item())
    if bad_step >= 0:
        warnings.warn(f"{config.name}: the loss or gradient norm became NaN/inf at step {bad_step}; the timing stands, "
                      "the final loss does not mean anything (lower --optimizer.lr or set --max_norm)", stacklevel=2)
    if profile_path is not None and cuda:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(i)
            synchronize(fabric.device)
        profile_path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=60, max_name_column_width=90))
    tokens_per_sec = steps * batch * seq_len / seconds
    peak = peak_flops(fabric.device)
    row = dict(
        model=config.name, compile=use_compile, tokens_per_sec=tokens_per_sec, step_ms=1e3 * seconds / steps,
        mfu=flops_per_token(config, seq_len) * tokens_per_sec / peak if peak else None,
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        final_loss=final_loss, params=sum(p.numel() for p in model.parameters()),
    )
    del model, opt, data
    if cuda:
        torch.cuda.empty_cache()
    return row
