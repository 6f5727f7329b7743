"""`litgpt evaluate` beside lm-eval's own Hugging Face model (`HFLM`) on the same weights, in one process: the
checkpoint converted to Hugging Face (`litgpt.scripts.convert_lit_checkpoint`), both scored on the same tasks with the
same settings, each one's load and evaluation wall time, both results and their relative difference per metric.
Prints a markdown table and writes it (OUT with the suffix .md) and JSON (--out).

    python benchmarks/evaluate_gpu.py --checkpoint_dir out/pretrain/pythia-160m/final \\
        --tasks python_syntax,python_code --include_path config_hub/evaluate --out out/evaluate_gpu.json

Only a layout with a Hugging Face equivalent can be compared (GPT-NeoX, Llama, DeepSeek: not MLA-o, nor MLA with a
parallel residual). The order of the two runs is `--first` (default ours); CUDA is initialised before either clock
starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from litgpt.api import LLM
from litgpt.evaluate import EvaluateArgs, evaluate_llm, load_tasks, markdown_table, scores
from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
from litgpt.utils import synchronize

HF_DTYPES = {"32-true": "float32", "bf16-true": "bfloat16", "16-true": "float16"}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """fn()'s value and its wall time in seconds, the device synchronised at both ends."""
    synchronize(device)
    t0 = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - t0


def run_ours(checkpoint_dir: Path, args: EvaluateArgs, device: torch.device, precision: str) -> dict:
    llm, load_s = timed(lambda: LLM.load(checkpoint_dir, device=str(device), precision=precision), device)
    tasks = load_tasks(args.task_names(), args.include_path)
    results, evaluate_s = timed(lambda: evaluate_llm(llm, args, tasks), device)
    del llm
    torch.cuda.empty_cache()
    return dict(load_s=load_s, evaluate_s=evaluate_s, scores=scores(results), table=markdown_table(results))


def run_hflm(hf_dir: Path, args: EvaluateArgs, device: torch.device, precision: str) -> dict:
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model, load_s = timed(lambda: HFLM(pretrained=str(hf_dir), batch_size=args.batch_size, device=str(device),
                                       dtype=HF_DTYPES[precision]), device)
    items, manager = load_tasks(args.task_names(), args.include_path)
    results, evaluate_s = timed(lambda: simple_evaluate(
        model=model, tasks=items, task_manager=manager, num_fewshot=args.num_fewshot, limit=args.lm_eval_limit(),
        random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
        fewshot_random_seed=args.seed, log_samples=False,
    ), device)
    del model
    torch.cuda.empty_cache()
    return dict(load_s=load_s, evaluate_s=evaluate_s, scores=scores(results), table=markdown_table(results))


def differences(ours: dict, theirs: dict) -> dict[str, float]:
    """|ours - HFLM| / |HFLM| of every metric both report, keyed `task/metric` (relative: a perplexity of an
    untrained model runs to 1e13; 0 where both are 0)."""
    out = {}
    for task, metrics in ours.items():
        for key, value in metrics.items():
            other = theirs.get(task, {}).get(key)
            if other is not None:
                out[f"{task}/{key}"] = abs(value - other) / abs(other) if other else float(value != 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_dir", type=Path, required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--include_path", type=Path, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=float, default=None)
    parser.add_argument("--num_fewshot", type=int, default=None)
    parser.add_argument("--precision", choices=sorted(HF_DTYPES), default="bf16-true")
    parser.add_argument("--first", choices=("ours", "hflm"), default="ours")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate_gpu.json"))
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("evaluate_gpu.py: error: no CUDA device; this benchmark times the GPU")
    device = torch.device("cuda")
    torch.zeros(1, device=device)  # the CUDA context, before either clock
    args = EvaluateArgs(tasks=opts.tasks, num_fewshot=opts.num_fewshot, batch_size=opts.batch_size,
                        limit=opts.limit, include_path=opts.include_path)
    args.validate()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = convert_lit_checkpoint(opts.checkpoint_dir, Path(tmp) / "hf")
        runs = {"ours": lambda: run_ours(opts.checkpoint_dir, args, device, opts.precision),
                "hflm": lambda: run_hflm(hf_dir, args, device, opts.precision)}
        order = [opts.first] + [k for k in runs if k != opts.first]
        measured = {name: runs[name]() for name in order}
    diff = differences(measured["ours"]["scores"], measured["hflm"]["scores"])
    record = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        command=" ".join(["python", *sys.argv]),
        checkpoint_dir=str(opts.checkpoint_dir),
        settings=dict(args.settings(), precision=opts.precision, order=order),
        ours={k: v for k, v in measured["ours"].items() if k != "table"},
        hflm={k: v for k, v in measured["hflm"].items() if k != "table"},
        max_relative_difference=max(diff.values(), default=None),
        relative_difference=diff,
    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2))
    lines = [f"# litgpt evaluate vs lm-eval HFLM ({record['device']}, torch {record['torch']}, {opts.precision}, "
             f"batch {opts.batch_size}, {record['date']})", "", f"Command: `{record['command']}`", "",
             "| runner | load (s) | evaluate (s) |", "|---|---|---|"]
    for name in order:
        lines.append(f"| {'litgpt evaluate' if name == 'ours' else 'HFLM'} | {measured[name]['load_s']:.2f} "
                     f"| {measured[name]['evaluate_s']:.2f} |")
    lines += ["", f"largest |ours - HFLM| / |HFLM| over the metrics: {record['max_relative_difference']}", ""]
    for name in order:
        lines += [f"## {name}", "", measured[name]["table"]]
    report = "\n".join(lines) + "\n"
    md = opts.out.with_suffix(".md")
    md.write_text(report)
    print(report)
    print(f"wrote {opts.out} and {md}")


if __name__ == "__main__":
    main()
