"""`litgpt benchmark finetune`: full fine-tuning, LoRA and QLoRA of MHA, GQA, MQA and MLA models at equal data and steps.

Every cell (mode x attention) is a real `litgpt finetune_full` / `litgpt finetune_lora` run (`litgpt.finetune.full.setup`,
`litgpt.finetune.lora.setup`: the loop, checkpoints and logs of the commands) into `out_dir/<mode>-<attention>/`,
with the same data, steps, batch, sequence length and seed. Per cell: trainable parameters, optimizer steps,
training time, samples/s and tokens/s (padding excluded), peak CUDA memory (reset before each cell; "-" on the CPU),
validation loss before and after, and the loss of every logged step. Results go to `results.json` and `results.md`,
plots to `loss_vs_step.png` and `peak_memory.png`. Rerunning the command skips finished cells and resumes an
interrupted one from its latest checkpoint; a QLoRA cell that cannot run here (no CUDA, no bitsandbytes) is recorded
as skipped with the reason, and tried again on the next run.

GQA and MQA cells may start from the MHA checkpoint: `derive_grouped_checkpoint` mean-pools each group's key and
value heads into one, the initialisation of the GQA paper's uptraining (Ainslie et al., 2023), and the fine-tune
then trains the grouped model.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs
from litgpt.benchmark.compare import load_results, read_metrics, write_json
from litgpt.checkpoint import extract_state_dict, read_checkpoint_file
from litgpt.config import Config
from litgpt.data.sft import SFTDataModule
from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_directory, hyperparameters

MODES = ("full", "lora", "qlora")
ATTENTION = ("mha", "gqa", "mqa", "mla")
RESULTS_VERSION = 1
ANY_VALUE_SETTINGS = ("data.init_args.loader_workers",)
DEFAULT_TRAIN = TrainArgs(save_interval=100, log_interval=1, global_batch_size=8, micro_batch_size=8,
                          lr_warmup_steps=30, max_steps=300, max_seq_length=256, min_lr=0.0)
DEFAULT_EVAL = EvalArgs(interval=100, max_iters=20, initial_validation=True, final_validation=True)
FULL_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4, "weight_decay": 0.0}}
LORA_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-4, "weight_decay": 0.0}}


def benchmark_finetune(
    checkpoints: dict[str, Path],
    data: SFTDataModule,
    modes: Optional[list[str]] = None,
    attention: Optional[list[str]] = None,
    out_dir: Path = Path("out/benchmark/finetune"),
    precision: Optional[str] = None,
    quantize: str = "bnb.nf4",
    train: TrainArgs = DEFAULT_TRAIN,
    eval: EvalArgs = DEFAULT_EVAL,
    full_optimizer: OptimizerArg = FULL_OPTIMIZER,
    lora_optimizer: OptimizerArg = LORA_OPTIMIZER,
    lora: Optional[dict] = None,
    seed: int = 1337,
) -> dict:
    """Fine-tune each (mode, attention) cell at equal data and steps; tabulate and plot.

    Args:
        checkpoints: attention variant -> checkpoint directory, e.g. `{mha: out/pretrain/mha/final, mla:
            out/pretrain/mla/final}`. A gqa or mqa cell without its own checkpoint starts from the mha one with each
            group's key/value heads mean-pooled (the GQA paper's uptraining initialisation; gqa: n_head / 4
            groups, n_head / 2 for 4 to 7 heads; mqa: 1).
        data: the instruction data, shared by every cell (`--data JSON --data.json_path DIR`).
        modes: of full, lora, qlora (default: all three).
        attention: of mha, gqa, mqa, mla (default: all four).
        out_dir: each cell trains into out_dir/<mode>-<attention>/; results.json, results.md and the plots go here.
        precision: of the full and lora cells, as for `litgpt finetune_full` (default: bf16-mixed on CUDA, else
            32-true); qlora cells compute in bf16-true.
        quantize: the --quantize mode of the qlora cells.
        train: loop settings of every cell (set the steps with train.max_steps).
        eval: validation settings; the validation before the first step and after the last are the compared losses.
        full_optimizer: the optimizer of the full cells (`--full_optimizer.lr 1e-4`, ...).
        lora_optimizer: the optimizer of the lora and qlora cells.
        lora: `litgpt finetune_lora` options for the lora and qlora cells, e.g. `{lora_r: 16, lora_key: true}`
            (default: finetune_lora's).
        seed: random seed of every cell.
    """
    full_optimizer = OptimizerSpec.resolve(full_optimizer)
    lora_optimizer = OptimizerSpec.resolve(lora_optimizer)
    settings = hyperparameters(locals())
    for key in ("modes", "attention", "out_dir"):  # a rerun may add or drop cells
        settings.pop(key)
    from litgpt.finetune import full as full_finetune
    from litgpt.finetune import lora as lora_finetune

    modes = _choices("modes", modes, MODES)
    attention = _choices("attention", attention, ATTENTION)
    lora_args = dict(lora or {})
    known = {name for name in _parameters(lora_finetune.setup) if name.startswith("lora_")}
    unknown = sorted(set(lora_args) - known)
    if unknown:
        raise ValueError(f"--lora takes finetune_lora's {', '.join(sorted(known))}; got {', '.join(unknown)}")
    if not eval.initial_validation or not eval.final_validation:
        raise ValueError("benchmark finetune compares the validation loss before and after: keep "
                         "eval.initial_validation and eval.final_validation true")
    train.validate()
    if train.max_steps is None:
        raise ValueError("set train.max_steps: every cell trains the same number of optimizer steps")
    out_dir.mkdir(parents=True, exist_ok=True)
    cell_checkpoints = resolve_checkpoints(checkpoints, attention, out_dir / "checkpoints")
    results_path = out_dir / "results.json"
    results = load_results(results_path, settings, version=RESULTS_VERSION, entries="cells",
                           command="benchmark finetune", run="benchmark", any_value=ANY_VALUE_SETTINGS)
    write_json(results_path, results)

    cuda = torch.cuda.is_available()
    for mode in modes:
        for attn in attention:
            cell, run_dir = f"{mode}-{attn}", out_dir / f"{mode}-{attn}"
            if results["cells"].get(cell, {}).get("status") == "done":
                print(f"benchmark finetune: {cell} is finished (results recorded), skipping it")
                continue
            if mode == "qlora":
                reason = _qlora_blocker(quantize)
                if reason is not None:
                    print(f"benchmark finetune: skipping {cell}: {reason}")
                    results["cells"][cell] = dict(cell=cell, mode=mode, attention=attn, status="skipped", reason=reason)
                    write_json(results_path, results)
                    continue
            finished = (run_dir / "final" / ("lit_model.pth" if mode == "full" else "lit_model.pth.lora")).is_file()
            peak_memory: Optional[float] = None
            started = time.perf_counter()
            if finished:  # stopped between the final checkpoint and recording: the peak memory is lost
                print(f"benchmark finetune: {cell} finished training earlier; recording its results")
            else:
                print(f"benchmark finetune: training {cell} into {run_dir}")
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()  # each cell's own peak, never the previous cell's
                common = dict(checkpoint_dir=cell_checkpoints[attn], out_dir=run_dir, devices=1, resume="auto",
                              data=data, train=train, eval=eval, logger_name="csv", seed=seed)
                if mode == "full":
                    full_finetune.setup(precision=precision, optimizer=full_optimizer.as_dict(), **common)
                else:
                    lora_finetune.setup(precision=precision if mode == "lora" else None,
                                        quantize=quantize if mode == "qlora" else None,
                                        optimizer=lora_optimizer.as_dict(), **lora_args, **common)
                peak_memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            results["cells"][cell] = collect(cell, mode, attn, run_dir, train.global_batch_size, peak_memory)
            if not finished:  # the cell's whole run: loading, data, validations and checkpoints beside the training
                results["cells"][cell]["wall_s"] = time.perf_counter() - started
            write_json(results_path, results)

    results["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    results["torch"] = torch.__version__
    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_json(results_path, results)
    rows = [results["cells"][f"{m}-{a}"] for m in modes for a in attention if f"{m}-{a}" in results["cells"]]
    write_table(rows, results, out_dir / "results.md")
    plot_losses(rows, out_dir / "loss_vs_step.png")
    plot_memory(rows, out_dir / "peak_memory.png")
    print(f"benchmark finetune: wrote {results_path}, results.md, loss_vs_step.png, peak_memory.png in {out_dir}")
    print((out_dir / "results.md").read_text(encoding="utf-8"))
    return results


# ---------------------------------------------------------------------------------------- checkpoints
def attention_kind(config: Config) -> str:
    """mha, gqa, mqa or mla: the attention variant of a model config."""
    if config.latent_attention is not None:
        return "mla"
    if config.n_query_groups == config.n_head:
        return "mha"
    return "mqa" if config.n_query_groups == 1 else "gqa"


def resolve_checkpoints(checkpoints: dict[str, Path], attention: list[str], derived_dir: Path) -> dict[str, Path]:
    """The checkpoint of every attention variant: the given ones (checked to be that variant), gqa and mqa derived
    from mha where not given (`derive_grouped_checkpoint`, into derived_dir/<variant>/, reused on a rerun)."""
    unknown = sorted(set(checkpoints) - set(ATTENTION))
    if unknown:
        raise ValueError(f"--checkpoints keys must be of {', '.join(ATTENTION)}; got {', '.join(unknown)}")
    resolved: dict[str, Path] = {}
    for attn in attention:
        path = checkpoints.get(attn)
        if path is None:
            if attn not in ("gqa", "mqa") or "mha" not in checkpoints:
                raise ValueError(f"no checkpoint for the {attn} cells: pass --checkpoints with an {attn} entry"
                                 + (" (or an mha one to derive it from)" if attn in ("gqa", "mqa") else ""))
            groups = grouped_heads(Config.from_checkpoint(Path(checkpoints["mha"])).n_head, attn)
            path = derive_grouped_checkpoint(Path(checkpoints["mha"]), groups, derived_dir / attn)
        path = Path(path)
        if not (path / "model_config.yaml").is_file():
            raise FileNotFoundError(f"--checkpoints {attn}: {str(path)!r} has no model_config.yaml; point at a "
                                    "checkpoint directory")
        kind = attention_kind(Config.from_checkpoint(path))
        if kind != attn:
            raise ValueError(f"--checkpoints {attn}: {str(path)!r} holds an {kind} model, not {attn}")
        resolved[attn] = path
    return resolved


def grouped_heads(n_head: int, attn: str) -> int:
    """The key/value heads of the gqa (n_head / 4, or n_head / 2 where that leaves one) or mqa (1) variant."""
    if attn == "mqa":
        return 1
    groups = n_head // 4 if n_head // 4 > 1 else n_head // 2
    if not 1 < groups < n_head:
        raise ValueError(f"an MHA model with {n_head} heads has no GQA variant to derive; pass a gqa checkpoint")
    return groups


def derive_grouped_checkpoint(mha_dir: Path, n_query_groups: int, out_dir: Path) -> Path:
    """An MHA checkpoint turned into one with `n_query_groups` key/value heads: each group's K and V heads (the
    query heads g * q_per_kv ... (g + 1) * q_per_kv - 1 read group g) mean-pooled, weights and biases, the query
    and every other weight kept. Written atomically into out_dir with the tokenizer; an existing one is reused."""
    if (out_dir / "lit_model.pth").is_file():
        return out_dir
    config = Config.from_checkpoint(mha_dir)
    if attention_kind(config) != "mha":
        raise ValueError(f"{str(mha_dir)!r} holds an {attention_kind(config)} model; K/V heads are pooled from MHA")
    if config.n_head % n_query_groups:
        raise ValueError(f"n_query_groups {n_query_groups} does not divide the {config.n_head} heads")
    suffix = "mqa" if n_query_groups == 1 else "gqa"
    grouped = Config.from_dict({**dataclasses.asdict(config), "n_query_groups": n_query_groups,
                                "name": f"{config.name}-{suffix}"}, source=str(mha_dir / "model_config.yaml"))
    weights = mha_dir / "lit_model.pth"
    state = extract_state_dict(read_checkpoint_file(weights), str(weights))
    hs, nh, q_per_kv = config.head_size, config.n_head, config.n_head // n_query_groups
    pooled = {}
    for name, t in state.items():
        if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            q, k, v = t.split(nh * hs)  # (nh * hs, ...) each: the MHA layout [Q heads | K heads | V heads]
            pool = [x.reshape(n_query_groups, q_per_kv, hs, *x.shape[1:]).mean(1).reshape(n_query_groups * hs,
                                                                                          *x.shape[1:])
                    for x in (k, v)]  # (ng * hs, ...) each
            t = torch.cat([q, *pool])
        pooled[name] = t.clone()
    with atomic_directory(out_dir) as tmp:
        torch.save(pooled, tmp / "lit_model.pth")
        grouped.save(tmp / "model_config.yaml")
        Tokenizer(mha_dir).save(tmp)
    return out_dir


# ---------------------------------------------------------------------------------------- results
def collect(cell: str, mode: str, attn: str, run_dir: Path, global_batch_size: int,
            peak_memory_gib: Optional[float]) -> dict:
    """One cell's row, from its final training state and its CSV log."""
    state_file = run_dir / "final" / ("lit_model.pth" if mode == "full" else "lit_model.pth.lora")
    state = read_checkpoint_file(state_file)
    trainable = sum(t.numel() for t in extract_state_dict(state, str(state_file)).values())
    log = read_metrics(run_dir)
    val = {int(r["step"]): r["val_loss"] for r in log if "val_loss" in r}
    steps = int(state["step_count"])
    if 0 not in val or steps not in val:
        raise ValueError(f"{run_dir}: no validation logged before the first step and at step {steps}; delete the "
                         "cell's directory and rerun")
    seconds = float(state["train_time"])
    return dict(
        cell=cell, mode=mode, attention=attn, status="done", trainable_params=trainable, steps=steps,
        train_time_s=seconds, samples_per_s=steps * global_batch_size / seconds,
        tokens_per_s=state["tokens"] / seconds, tokens=int(state["tokens"]), peak_memory_gib=peak_memory_gib,
        val_loss_before=val[0], val_loss_after=val[steps],
        loss=[[int(r["step"]), r["loss"]] for r in log if "loss" in r],
        val_loss=[[step, loss] for step, loss in sorted(val.items())],
    )


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value))


def write_table(rows: list[dict], results: dict, path: Path) -> None:
    """results.md: one line per cell plus the shared settings."""
    s = results["settings"]
    lines = [
        "# Fine-tuning benchmark",
        "",
        f"- date: {results['date']}; device: {results['device']}; torch {results['torch']}; precision "
        f"{s['precision'] or 'default'} (qlora: bf16-true, {s['quantize']}); seed {s['seed']}",
        f"- data: {json_safe(s['data'])}",
        f"- train: {s['train']}",
        f"- optimizers: full {s['full_optimizer']}; lora/qlora {s['lora_optimizer']}; "
        f"lora options {s['lora'] or 'default'}",
        f"- checkpoints: {s['checkpoints']} (gqa/mqa without their own: mean-pooled K/V heads of mha)",
        "",
        "| cell | trainable params | steps | train time | samples/s | tokens/s | peak memory | val loss before | "
        "val loss after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['cell']} | skipped: {r['reason']} | | | | | | | |")
            continue
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f} GiB"
        lines.append(
            f"| {r['cell']} | {r['trainable_params']:,} | {r['steps']} | {r['train_time_s']:.1f} s | "
            f"{r['samples_per_s']:,.1f} | {r['tokens_per_s']:,.0f} | {memory} | {r['val_loss_before']:.4f} | "
            f"{r['val_loss_after']:.4f} |"
        )
    lines += [
        "",
        "Train time, samples/s and tokens/s count training steps only (validation and checkpointing excluded); "
        "tokens exclude padding. Peak memory is `torch.cuda.max_memory_allocated`, reset before each cell (- on the "
        "CPU, or when a cell finished in an earlier run). Val loss: the mean over the first eval.max_iters "
        "validation batches, before the first step and after the last.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_losses(rows: list[dict], path: Path) -> None:
    """Training loss (thin) and validation loss (markers) of every finished cell against the step."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(9, 5.5))
    for i, r in enumerate(x for x in rows if x["status"] == "done"):
        color = f"C{i % 10}"
        ax.plot(*zip(*r["loss"]), color=color, alpha=0.4, linewidth=1)
        ax.plot(*zip(*r["val_loss"]), color=color, marker="o", linewidth=2, label=r["cell"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("fine-tuning loss: train (thin) and validation (markers)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_memory(rows: list[dict], path: Path) -> None:
    """Peak CUDA memory per cell (cells without a measurement are labelled as such)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(9, 4.5))
    labels = [r["cell"] for r in rows]
    values = [r.get("peak_memory_gib") or 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), values, color=[f"C{['full', 'lora', 'qlora'].index(r['mode'])}" for r in rows])
    for bar, r in zip(bars, rows):
        note = (f"{r['peak_memory_gib']:.2f}" if r.get("peak_memory_gib") is not None
                else "skipped" if r["status"] != "done" else "not measured")
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title("peak CUDA memory per cell")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------- helpers
def _choices(name: str, values: Optional[list[str]], allowed: tuple[str, ...]) -> list[str]:
    values = list(allowed if values is None else values)
    bad = [v for v in values if v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        raise ValueError(f"--{name} must be distinct values of {', '.join(allowed)}, got {values}")
    return values


def _qlora_blocker(quantize: str) -> Optional[str]:
    """Why a QLoRA cell cannot run here (the one-line error of `check_quantize`), or None."""
    from litgpt.quantize import check_quantize

    try:
        check_quantize(quantize, "cuda" if torch.cuda.is_available() else "cpu", "bf16-true")
    except ValueError as e:
        return str(e)
    return None


def _parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)
