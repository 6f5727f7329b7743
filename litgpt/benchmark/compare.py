"""`litgpt compare`: train several model configs under identical conditions and compare them.

Every model is trained by `litgpt pretrain` (`litgpt.pretrain.setup`, the real loop) into `out_dir/<model>/`
with the same data, tokenizer, token budget, seed, optimizer and hyperparameters, then judged on the same
held-out tokens (the first `eval.max_iters` validation batches, validated after the last step): loss, perplexity
and next-token accuracy (the share of tokens whose argmax prediction is right), and for mixture-of-experts models
the share of those tokens each expert of each MoE layer received. Results go to `results.json` and `results.md`;
loss curves (from each run's CSV log) to `loss_vs_tokens.png` and `loss_vs_time.png`. Rerunning the same command
skips finished models and resumes an interrupted one from its latest step checkpoint. Processes with different
`--models` and otherwise the same settings may share one out_dir, also at once (each merges its rows into
results.json; models trained at once on one GPU share it, so their tokens/s are not single-run figures).
"""

from __future__ import annotations

import csv
import gc
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs, check_devices
from litgpt.checkpoint import load_checkpoint, read_checkpoint_file
from litgpt.config import Config
from litgpt.data import DataModule, TinyStories
from litgpt.data.base import make_val_loader
from litgpt.evaluate import EvaluateArgs, load_tasks, score_checkpoint, task_score_lines
from litgpt.model import GPT
from litgpt.moe import moe_layers
from litgpt.pretrain import PRECISIONS, resolve_config, setup
from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_write, hyperparameters

DEFAULT_MODELS = ["pythia-70m", "pythia-70m-gqa", "pythia-70m-mqa", "pythia-70m-mla"]
RESULTS_VERSION = 1
PEAK_MEMORY_FILE = "peak_memory.json"  # written beside each run on CUDA, so a later recording keeps the peak
# Settings a rerun may change: process counts change how fast the data is read, never what a model trains on
# (runs before the rename recorded tokenize_workers as num_workers).
ANY_VALUE_SETTINGS = ("data.init_args.tokenize_workers", "data.init_args.loader_workers", "data.init_args.num_workers")


def compare(
    models: Optional[list[str]] = None,
    model_config: Optional[dict] = None,
    out_dir: Path = Path("out/compare"),
    precision: Optional[str] = None,
    data: Optional[DataModule] = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    optimizer: OptimizerArg = "torch.optim.AdamW",
    devices: Union[int, str] = 1,
    tokenizer_dir: Optional[Path] = None,
    seed: int = 42,
    compile: bool = False,
    evaluate: EvaluateArgs = EvaluateArgs(),
) -> dict:
    """Pretrain each model with identical settings, validate on the same held-out tokens, tabulate and plot.

    Args:
        models: named configs to compare (default: pythia-70m, pythia-70m-gqa, pythia-70m-mqa, pythia-70m-mla).
        model_config: config fields overriding every model's (e.g. `{block_size: 1024}`).
        out_dir: each model trains into out_dir/<model>/; results.json, results.md and the plots go here.
        precision: as `litgpt pretrain` (default: bf16-mixed on CUDA, else 32-true).
        data: the data module, shared by all models (default: TinyStories).
        train: training loop settings, shared by all models (set a token budget with train.max_tokens).
        eval: validation settings; the final validation over eval.max_iters batches is the compared val loss.
        optimizer: the optimizer shared by all models, spelled as for `litgpt pretrain` (`--optimizer AdamW
            --optimizer.lr 3e-4`, `--optimizer.init_args.*`, or {class_path, init_args}).
        devices: devices per model run.
        tokenizer_dir: tokenizer for all models; if omitted, one BPE with the first model's vocab_size is trained
            on the training text into out_dir/tokenizer and shared by all models.
        seed: random seed of weights and data order, the same for every model.
        compile: compile each model with torch.compile.
        evaluate: lm-eval tasks to score every trained model on (`--evaluate.tasks hellaswag,arc_easy`, with
            `--evaluate.include_path DIR` for task YAMLs of your own; see `litgpt evaluate`); the scores join each
            model's row and the table. They are not training settings: rerunning with other tasks scores the
            finished models again without retraining them.
    """
    optimizer = OptimizerSpec.resolve(optimizer).as_dict()
    devices = check_devices(devices)
    settings = hyperparameters(locals())
    settings.pop("models"), settings.pop("out_dir"), settings.pop("evaluate")  # scores record their own settings
    from tqdm import tqdm

    models = list(DEFAULT_MODELS if models is None else models)
    if not models or len(set(models)) != len(models):
        raise ValueError(f"--models must be a non-empty list of distinct model names, got {models}")
    configs = {name: resolve_config(name, model_config) for name in models}  # bad names fail here, before work
    if not eval.final_validation:
        raise ValueError("compare reads each model's val loss from the final validation; keep eval.final_validation")
    train.validate()
    eval.validate()
    evaluate.validate()
    # unknown task names, or hub tasks with no hub, fail here, before any training
    tasks = load_tasks(evaluate.task_names(), evaluate.include_path) if evaluate.task_names() else None
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"--tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    results_path = out_dir / "results.json"
    results = load_results(results_path, settings, version=RESULTS_VERSION, entries="models", command="compare",
                           run="comparison run", any_value=ANY_VALUE_SETTINGS)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_path, results)  # settings are recorded before any training, so a rerun can be matched
    data = TinyStories() if data is None else data
    if tokenizer_dir is None:
        tokenizer_dir = _shared_tokenizer(data, configs[models[0]], out_dir / "tokenizer")

    held_out: dict[int, list[torch.Tensor]] = {}  # sequence length -> the validation batches every model is judged on
    progress = tqdm(models, desc="compare", unit="model")
    for name in progress:
        progress.set_postfix_str(name)
        run_dir = out_dir / name
        finished = (run_dir / "final" / "lit_model.pth").is_file()
        if finished and name in results["models"]:
            progress.write(f"compare: {name} is finished (results recorded), skipping it")
            continue
        if finished:  # trained by an earlier or a concurrent run that stopped before (or did not) record it
            peak_memory = _read_peak_memory(run_dir)
            known = "" if peak_memory is not None else " (peak memory unknown)"
            progress.write(f"compare: {name} finished training earlier; recording its results{known}")
        else:
            progress.write(f"compare: training {name} into {run_dir}")
            peak_memory = _train(name, model_config, run_dir, precision, data, train, eval, optimizer, devices,
                                 tokenizer_dir, seed, compile)
        seq_len = train.max_seq_length or configs[name].block_size
        if seq_len not in held_out:
            held_out[seq_len] = held_out_batches(data, tokenizer_dir, seq_len, train.micro_batch_size, eval.max_iters)
        row = collect(name, configs[name], run_dir, precision, peak_memory, held_out[seq_len])
        results = _record(results_path, results, name, row)

    if tasks is not None:  # each model's task scores, kept while the evaluation settings stay the same
        for name in models:
            row = results["models"][name]
            if (row.get("evaluate") or {}).get("settings") != evaluate.settings():
                progress.write(f"compare: scoring {name} on {evaluate.tasks}")
                row["evaluate"] = score_checkpoint(out_dir / name / "final", evaluate, tasks,
                                                   precision=precision and precision.replace("-mixed", "-true"))
                results = _record(results_path, results, name, row)
    rows = [results["models"][name] for name in models]
    results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    write_json(results_path, results)
    write_table(rows, results, out_dir / "results.md")
    plot_curves(rows, out_dir, x_key="tokens", x_label="training tokens", path=out_dir / "loss_vs_tokens.png")
    plot_curves(rows, out_dir, x_key="time", x_label="training time (s)", path=out_dir / "loss_vs_time.png")
    progress.write(f"compare: wrote {results_path}, results.md, loss_vs_tokens.png, loss_vs_time.png in {out_dir}")
    print(open(out_dir / "results.md", encoding="utf-8").read())
    return results


# ---------------------------------------------------------------------------------------- training
def _train(
    name: str, model_config: Optional[dict], run_dir: Path, precision: Optional[str], data: DataModule,
    train: TrainArgs, eval: EvalArgs, optimizer: dict, devices: Union[int, str],
    tokenizer_dir: Path, seed: int, compile: bool,
) -> Optional[float]:
    """Run `litgpt pretrain` for one model (resuming from its latest checkpoint); return its peak GiB on CUDA."""
    cuda = torch.cuda.is_available()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # each model's own peak, never the previous model's
    setup(model_name=name, model_config=model_config, out_dir=run_dir, precision=precision, resume="auto",
          data=data, train=train, eval=eval, optimizer=optimizer, devices=devices, tokenizer_dir=tokenizer_dir,
          logger_name="csv", seed=seed, compile=compile)
    if not cuda:
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    write_json(run_dir / PEAK_MEMORY_FILE, {"peak_memory_gib": peak})  # for a later run that records this model
    return peak


def _read_peak_memory(run_dir: Path) -> Optional[float]:
    """The peak GiB `_train` wrote beside a finished run, or None (CPU, or trained before it was written)."""
    path = run_dir / PEAK_MEMORY_FILE
    return json.loads(path.read_text(encoding="utf-8"))["peak_memory_gib"] if path.is_file() else None


def _record(path: Path, results: dict, name: str, row: dict) -> dict:
    """`results` with `name`'s row, merged with the rows another compare process running in the same out_dir
    (with other --models) wrote to `path` meanwhile, written atomically; returns the merged record."""
    on_disk = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if on_disk and not changed_settings(on_disk.get("settings", {}), results["settings"], ANY_VALUE_SETTINGS):
        results["models"] = {**on_disk.get("models", {}), **results["models"]}
    results["models"][name] = row
    write_json(path, results)
    return results


def _shared_tokenizer(data: DataModule, config: Config, tokenizer_dir: Path) -> Path:
    """Train one BPE for every model (unless already there), as `litgpt pretrain` would for a single run."""
    if not (tokenizer_dir / "tokenizer.json").is_file():
        from litgpt.scripts.train_tokenizer import train_tokenizer

        train_tokenizer(data=data, out_dir=tokenizer_dir, vocab_size=config.vocab_size)
    return tokenizer_dir


# ---------------------------------------------------------------------------------------- results
def held_out_batches(
    data: DataModule, tokenizer_dir: Path, seq_len: int, batch_size: int, max_iters: int
) -> list[torch.Tensor]:
    """The validation batches (batch_size, seq_len + 1) that `litgpt pretrain`'s final validation reads."""
    data.connect(Tokenizer(tokenizer_dir), max_seq_length=seq_len)
    data.prepare_data()
    data.setup()
    return list(make_val_loader(data.val_dataset(), batch_size, max_iters))


@torch.no_grad()
def evaluate(model: GPT, batches: list[torch.Tensor], autocast_dtype: Optional[torch.dtype] = None) -> dict[str, Any]:
    """Next-token loss and accuracy of `model` over `batches` (each (B, T + 1) token ids), one row at a time so the
    (T, vocab) logits stay small, and for MoE models each layer's per-expert share of the routed tokens.

    Returns {"loss", "accuracy", "expert_load"}: expert_load is one list of n_expert shares (summing to 1) per MoE
    layer, empty for dense models.
    """
    device = model.lm_head.weight.device
    model.eval()
    counts = [torch.zeros(layer.config.n_expert, device=device) for layer in moe_layers(model)]
    hooks = [layer.gate.register_forward_hook(_tally_choices(tally)) for layer, tally in zip(moe_layers(model), counts)]
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    tokens = 0
    try:
        for batch in batches:
            for row in batch.to(device):  # (T + 1,)
                inputs, targets = row[None, :-1], row[1:]  # (1, T), (T,)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    # all padded_vocab_size logits, as training's loss: a tokenizer may have ids past vocab_size
                    # (Pythia's: 50,277 ids, vocab_size 50,254)
                    logits = model(inputs)[0].float()  # (T, padded_vocab)
                loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
                correct += (logits.argmax(dim=-1) == targets).sum()
                tokens += targets.numel()
    finally:
        for hook in hooks:
            hook.remove()
    shares = [(tally / tally.sum()).tolist() for tally in counts]
    return dict(loss=loss.item() / tokens, accuracy=correct.item() / tokens, expert_load=shares)


def _tally_choices(tally: torch.Tensor) -> Any:
    """A forward hook for a `litgpt.moe.Router` that adds up, in tally (E,), how often each expert was chosen."""

    def hook(module: torch.nn.Module, args: Any, output: tuple[torch.Tensor, ...]) -> None:
        chosen = output[1].flatten()  # (N * k,) expert indices
        tally.scatter_add_(0, chosen, torch.ones_like(chosen, dtype=tally.dtype))

    return hook


def collect(
    name: str, config: Config, run_dir: Path, precision: Optional[str], peak_memory_gib: Optional[float],
    held_out: list[torch.Tensor],
) -> dict:
    """One model's row: size, final val loss / ppl, next-token accuracy on the `held_out` batches (and per-expert
    load for MoE models), throughput, memory, KV bytes per token, train time."""
    state = read_checkpoint_file(run_dir / "final" / "lit_model.pth")
    log = read_metrics(run_dir)
    val = [r for r in log if r.get("val_loss") is not None]
    if not val or val[-1]["step"] != state["step_count"]:
        raise ValueError(f"{run_dir}: no validation logged at the final step {state['step_count']}; rerun compare")
    with torch.device("meta"):
        params = sum(p.numel() for p in GPT(config).parameters())
    element_size = _element_size(precision)
    weight_dtype, autocast_dtype = _eval_dtypes(precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scores = evaluate(load_checkpoint(run_dir / "final", device=device, dtype=weight_dtype), held_out, autocast_dtype)
    load = scores["expert_load"]
    return dict(
        model=name,
        params=params,
        val_loss=val[-1]["val_loss"],
        val_ppl=math.exp(val[-1]["val_loss"]),
        val_acc=scores["accuracy"],
        expert_load=load,  # per MoE layer, each expert's share of the held-out tokens' routing choices
        expert_max_violation=_max_violation(load),
        steps=state["step_count"],
        tokens=state["tokens"],
        train_time_s=state["train_time"],
        tokens_per_s=state["tokens"] / state["train_time"],
        peak_memory_gib=peak_memory_gib,
        kv_values_per_token_per_layer=config.kv_values_per_token,
        kv_bytes_per_token=config.kv_values_per_token * config.n_layer * element_size,
        kv_element_bytes=element_size,
        n_layer=config.n_layer,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """Logged rows of all runs of `run_dir` (resumes add version_N), by step; a later run's row wins a tie.

    Each row has `step` and whichever of loss, tokens, step_time, val_loss were logged, plus `time`: the
    cumulative training time (excluding validation and checkpointing) at that step.
    """
    versions = sorted((run_dir / "logs" / "csv").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"{run_dir}/logs/csv has no metrics.csv; was this model trained by compare?")
    train_rows: dict[int, dict] = {}
    val_rows: dict[int, dict] = {}
    for path in versions:
        with open(path, newline="", encoding="utf-8") as f:
            for raw in csv.DictReader(f):
                row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
                step = int(row.pop("step"))
                target = val_rows if "val_loss" in row else train_rows
                target[step] = {"step": step, **row}
    steps = sorted(train_rows)
    elapsed, previous, clock = [], 0, 0.0
    for step in steps:  # step_time is the mean over the steps since the previous logged row
        clock += (step - previous) * train_rows[step]["step_time"]
        elapsed.append(clock)
        train_rows[step]["time"], previous = clock, step
    for step, row in val_rows.items():  # validation rows have no tokens/time: take them from the training rows
        row["tokens"] = float(np.interp(step, [0] + steps, [0.0] + [train_rows[s]["tokens"] for s in steps]))
        row["time"] = float(np.interp(step, [0] + steps, [0.0] + elapsed))
    return sorted([*train_rows.values(), *val_rows.values()], key=lambda r: (r["step"], "val_loss" in r))


def _max_violation(expert_load: list[list[float]]) -> Optional[float]:
    """Max load / mean load - 1 per MoE layer, averaged over layers (0: balanced); None for dense models."""
    if not expert_load:
        return None
    return sum(max(shares) * len(shares) - 1 for shares in expert_load) / len(expert_load)


def _eval_dtypes(precision: Optional[str]) -> tuple[torch.dtype, Optional[torch.dtype]]:
    """The weight dtype and autocast dtype (None: off) that `precision` computes in, as in training."""
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    kind, mode = precision.split("-")
    dtype = {"bf16": torch.bfloat16, "16": torch.float16, "32": torch.float32, "64": torch.float64}[kind]
    return (torch.float32, dtype) if mode == "mixed" else (dtype, None)


def _element_size(precision: Optional[str]) -> int:
    """Bytes per cached value at the precision's compute dtype (bf16/fp16: 2, fp32: 4, fp64: 8)."""
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return {"bf16": 2, "16": 2, "32": 4, "64": 8}[precision.split("-")[0]]


def load_results(path: Path, settings: dict, *, version: int, entries: str, command: str, run: str,
                 any_value: tuple[str, ...] = ()) -> dict:
    """The results `command` recorded in `path` for this experiment, or a fresh record (`version`, `settings` and an
    empty `entries` table); a record of another version, or of a `run` with other settings (bar `any_value`), is an
    error. Shared by `litgpt compare` and `litgpt benchmark finetune`."""
    fresh = {"version": version, "settings": json.loads(json.dumps(settings)), entries: {}}
    if not path.is_file():
        return fresh
    recorded = json.loads(path.read_text(encoding="utf-8"))
    if recorded.get("version") != version:
        raise ValueError(f"{path} was written by another version of {command}; use a new --out_dir")
    changed = changed_settings(recorded.get("settings", {}), settings, any_value)
    if changed:
        raise ValueError(
            f"{path.parent} holds a {run} with different settings ({', '.join(changed)} changed); "
            "use a new --out_dir or the original settings"
        )
    return recorded


def changed_settings(recorded: dict, settings: dict, any_value: tuple[str, ...] = ()) -> list[str]:
    """The dotted names of the settings that differ between a recorded experiment and this one (`any_value` may)."""
    old, new = _flatten(recorded), _flatten(json.loads(json.dumps(settings)))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in any_value)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"max_steps": 6}} -> {"train.max_steps": 6}."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (a kill leaves the previous file)."""
    text = json.dumps(value, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_table(rows: list[dict], results: dict, path: Path) -> None:
    """results.md: one line per model plus the shared settings."""
    s = results["settings"]
    train, eval = s["train"], s["eval"]
    lines = [
        "# Model comparison",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; device: {results['device']}; "
        f"torch {torch.__version__}; precision {s['precision'] or 'default'}; seed {s['seed']}; "
        f"compile {s['compile']}",
        f"- shared: data {json.dumps(s['data'])}; model_config overrides {json.dumps(s['model_config'])}",
        f"- train: {json.dumps(train)}; optimizer {json.dumps(s['optimizer'])}",
        f"- val loss: final validation on the same first {eval['max_iters']} validation batches for every model",
        "",
        "| model | params | val loss | val ppl | val acc | tokens | tokens/s | peak memory | KV bytes/token "
        "| train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f} GiB"
        accuracy = "-" if r.get("val_acc") is None else f"{100 * r['val_acc']:.2f}%"  # rows recorded before it: -
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {accuracy} "
            f"| {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {memory} | {r['kv_bytes_per_token']:,} "
            f"| {_hms(r['train_time_s'])} |"
        )
    lines += [
        "",
        "tokens/s and train time count training steps only (validation and checkpointing excluded). Peak memory is "
        "`torch.cuda.max_memory_allocated` reset before each model (- on CPU). KV bytes/token: the cache of all "
        "layers for one token at the compute dtype's "
        f"{rows[0]['kv_element_bytes']} bytes per value (MLA: kv_lora_rank + qk_rope_head_dim values per layer; "
        "others: 2 x n_query_groups x head_size). val acc: the share of held-out tokens whose most likely "
        "prediction is the next token.",
    ]
    moe_rows = [r for r in rows if r.get("expert_load")]
    if moe_rows:
        n_expert = max(len(shares) for r in moe_rows for shares in r["expert_load"])
        lines += [
            "",
            "## Expert load",
            "",
            "Each expert's share of the held-out tokens' routing choices, averaged over the MoE layers (balanced: "
            f"{100 / n_expert:.1f}% each); max violation: max load / mean load - 1 per layer, averaged (0 is "
            "balanced).",
            "",
            "| model | max violation | " + " | ".join(f"e{i}" for i in range(n_expert)) + " |",
            "|---|---|" + "---|" * n_expert,
        ]
        for r in moe_rows:
            layers = r["expert_load"]
            mean = [f"{100 * sum(layer[i] for layer in layers) / len(layers):.1f}%" for i in range(len(layers[0]))]
            cells = mean + ["-"] * (n_expert - len(mean))
            lines.append(f"| {r['model']} | {r['expert_max_violation']:.3f} | " + " | ".join(cells) + " |")
    lines += task_score_lines(rows)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_curves(rows: list[dict], out_dir: Path, x_key: str, x_label: str, path: Path) -> None:
    """Train loss (thin) and val loss (markers) of every model against tokens or training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        log = read_metrics(out_dir / r["model"])
        color = f"C{i}"
        train = [(x[x_key], x["loss"]) for x in log if "loss" in x]
        val = [(x[x_key], x["val_loss"]) for x in log if "val_loss" in x]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.45, linewidth=1, label=f"{r['model']} train")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", linewidth=2, label=f"{r['model']} val")
    ax.set_xlabel(x_label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss vs " + x_label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
