"""`litgpt finetune_lora` (alias `litgpt finetune`): LoRA fine-tuning, QLoRA with `--quantize`.

The base weights stay frozen (and, with --quantize, are stored in 4 or 8 bits through bitsandbytes); only the
LoRA matrices train. Checkpoints hold `lit_model.pth.lora` (the LoRA weights with the optimizer and counters);
the final directory also gets the merged `lit_model.pth` (`litgpt merge_lora`), which `litgpt generate` loads.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import yaml

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs, check_devices
from litgpt.data.sft import SFTDataModule
from litgpt.finetune.base import FINETUNE_EVAL, FINETUNE_TRAIN, Method, Resume, default_data, launch, prepare
from litgpt.lora import LoRASpec, apply_lora, lora_filter, mark_only_lora_as_trainable
from litgpt.training import RunFiles
from litgpt.utils import hyperparameters

LORA_FILES = RunFiles(command="litgpt finetune_lora", state_file="lit_model.pth.lora",
                      weights_option="the checkpoint to fine-tune (CHECKPOINT_DIR)")
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 2e-4, "weight_decay": 0.0}}


def setup(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/finetune/lora"),
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    devices: Union[int, str] = 1,
    num_nodes: int = 1,
    resume: Resume = "auto",
    overwrite: bool = False,
    lora_r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.05,
    lora_query: bool = True,
    lora_key: bool = False,
    lora_value: bool = True,
    lora_projection: bool = False,
    lora_mlp: bool = False,
    lora_head: bool = False,
    data: Optional[SFTDataModule] = None,
    train: TrainArgs = FINETUNE_TRAIN,
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: OptimizerArg = DEFAULT_OPTIMIZER,
    logger_name: Literal["csv", "tensorboard", "wandb"] = "csv",
    seed: int = 1337,
) -> None:
    """Fine-tune a checkpoint with LoRA (low-rank updates of frozen weights), or QLoRA with --quantize.

    Checkpoints go to out_dir/step-XXXXXXXX/ and out_dir/final/ with lit_model.pth.lora (only the LoRA weights, with
    the optimizer and counters for an exact resume), model_config.yaml, tokenizer, prompt_style.yaml and
    hyperparameters.yaml; final/ also gets the merged lit_model.pth that `litgpt generate` and `litgpt chat` load.

    What each lora_* target adapts, per attention variant:

        target       MHA / GQA / MQA                         MLA
        query        the Q rows of attn.qkv                  attn.q_proj (q_a_proj and q_b_proj with q_lora_rank)
        key          the K rows of attn.qkv                  the k_nope rows of attn.kv_b_proj, and kv_a_proj_with_mqa
        value        the V rows of attn.qkv                  the v rows of attn.kv_b_proj
        projection   attn.proj                               attn.proj (MLA-o: attn.o_a_proj and attn.o_b_proj)
        mlp          the MLP's linears (fc, proj; LLaMA MLP: fc_1, fc_2, proj)
        head         lm_head

    Args:
        checkpoint_dir: the checkpoint to fine-tune (lit_model.pth, model_config.yaml, tokenizer files).
        out_dir: where checkpoints and logs go.
        precision: `32-true`, `bf16-mixed`, `bf16-true`, `16-true`... (default: bf16-mixed on CUDA, else 32-true;
            with --quantize bf16-true).
        quantize: QLoRA: store the frozen weights quantized by bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4,
            bnb.fp4-dq or bnb.int8-training (CUDA only).
        devices: devices per node to train on (data parallel), or "auto".
        num_nodes: number of nodes (Lightning Fabric launches devices x num_nodes processes).
        resume: `auto` (continue the run in out_dir from its latest readable checkpoint, or start one), `true`
            (the same, but a run must exist), `false` (start from step 0) or a checkpoint path.
        overwrite: with `--resume false`, delete the checkpoints of an earlier run in out_dir and start over.
        lora_r: rank of the updates.
        lora_alpha: scale of the updates: they are multiplied by lora_alpha / lora_r.
        lora_dropout: dropout on the updates' input.
        lora_query: adapt the queries (MHA/GQA/MQA: Q rows of qkv; MLA: q_proj, or q_a_proj and q_b_proj).
        lora_key: adapt the keys (MHA/GQA/MQA: K rows of qkv; MLA: k_nope rows of kv_b_proj and
            kv_a_proj_with_mqa, which makes the latent that values read too).
        lora_value: adapt the values (MHA/GQA/MQA: V rows of qkv; MLA: v rows of kv_b_proj).
        lora_projection: adapt the attention output projection (attn.proj; MLA-o: attn.o_a_proj, attn.o_b_proj).
        lora_mlp: adapt the MLP's linears.
        lora_head: adapt the LM head.
        data: the instruction data (`--data JSON --data.json_path FILE_OR_DIR`; default: Alpaca, downloaded).
        train: training loop settings (train.max_tokens is not supported: sequence lengths vary).
        eval: validation settings (by default also before the first step).
        optimizer: the optimizer over the LoRA weights: `--optimizer AdamW --optimizer.lr 2e-4`,
            `--optimizer.init_args.weight_decay 0.1`, or {class_path, init_args}.
        logger_name: `csv`, `tensorboard` or `wandb`.
        seed: random seed of the LoRA initialisation, dropout and data order.
    """
    optimizer = OptimizerSpec.resolve(optimizer)
    devices = check_devices(devices)
    data = default_data(data)
    hparams = hyperparameters(locals())
    spec = LoRASpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, query=lora_query, key=lora_key,
                    value=lora_value, projection=lora_projection, mlp=lora_mlp, head=lora_head)
    plugins = None
    if quantize is not None:
        from litgpt.quantize import check_quantize, quantization_plugin

        precision = precision or "bf16-true"
        check_quantize(quantize, "cuda" if torch.cuda.is_available() else "cpu", precision)
        plugins = quantization_plugin(quantize, precision)
    plan = prepare(LORA_FILES, checkpoint_dir, out_dir, precision, resume, overwrite, data, train, eval)
    if plan.checkpoint is not None:
        check_same_lora(plan.checkpoint.parent, spec)
    method = Method(
        "QLoRA" if quantize else "LoRA", LORA_FILES, adapt=functools.partial(apply_lora, spec=spec),
        mark_trainable=mark_only_lora_as_trainable, state_filter=lora_filter,
        finalize=functools.partial(merge_final, base_checkpoint_dir=checkpoint_dir),
    )
    launch(method, plan, checkpoint_dir, out_dir, devices, overwrite, train, eval, optimizer, logger_name, seed,
           hparams, plugins=plugins, num_nodes=num_nodes)


def check_same_lora(run_checkpoint_dir: Path, spec: LoRASpec) -> None:
    """Refuse to resume a checkpoint trained with other LoRA settings (its hyperparameters.yaml lora_* keys)."""
    path = run_checkpoint_dir / "hyperparameters.yaml"
    hparams = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(hparams, dict):
        raise ValueError(f"cannot resume {run_checkpoint_dir}: it has no readable hyperparameters.yaml to tell its "
                         "LoRA settings; train into another --out_dir")
    saved = LoRASpec.from_hyperparameters(hparams).hyperparameters()
    now = spec.hyperparameters()
    diff = ", ".join(f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in now if now[k] != saved[k])
    if diff:
        raise ValueError(f"cannot resume {run_checkpoint_dir}: it was trained with other LoRA settings ({diff}); "
                         "resume with the run's settings, or train into another --out_dir")


def merge_final(final_dir: Path, base_checkpoint_dir: Path) -> None:
    """Write the merged lit_model.pth into the final directory (from its lit_model.pth.lora and the base weights)."""
    from litgpt.scripts.merge_lora import merge_lora

    merge_lora(final_dir, pretrained_checkpoint_dir=base_checkpoint_dir)
