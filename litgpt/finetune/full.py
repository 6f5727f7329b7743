"""`litgpt finetune_full`: fine-tune every weight of a checkpoint on instruction data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs, check_devices
from litgpt.data.sft import SFTDataModule
from litgpt.finetune.base import FINETUNE_EVAL, FINETUNE_TRAIN, Method, Resume, default_data, launch, prepare
from litgpt.training import RunFiles
from litgpt.utils import hyperparameters

FULL_FILES = RunFiles(command="litgpt finetune_full", state_file="lit_model.pth",
                      weights_option="the checkpoint to fine-tune (CHECKPOINT_DIR)")
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-5, "weight_decay": 0.0}}


def setup(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/finetune/full"),
    precision: Optional[str] = None,
    devices: Union[int, str] = 1,
    num_nodes: int = 1,
    resume: Resume = "auto",
    overwrite: bool = False,
    data: Optional[SFTDataModule] = None,
    train: TrainArgs = FINETUNE_TRAIN,
    eval: EvalArgs = FINETUNE_EVAL,
    optimizer: OptimizerArg = DEFAULT_OPTIMIZER,
    logger_name: Literal["csv", "tensorboard", "wandb"] = "csv",
    seed: int = 1337,
) -> None:
    """Fine-tune all weights of a checkpoint on instruction data.

    Checkpoints go to out_dir/step-XXXXXXXX/ and out_dir/final/, each a complete checkpoint (lit_model.pth with the
    training state, model_config.yaml, tokenizer, prompt_style.yaml, hyperparameters.yaml) that `litgpt generate`
    and `litgpt chat` load; a rerun continues from the latest one exactly.

    Args:
        checkpoint_dir: the checkpoint to fine-tune (lit_model.pth, model_config.yaml, tokenizer files).
        out_dir: where checkpoints and logs go.
        precision: `32-true`, `bf16-mixed`, `bf16-true`, `16-mixed`... (default: bf16-mixed on CUDA, else 32-true).
        devices: devices per node to train on (data parallel), or "auto".
        num_nodes: number of nodes (Lightning Fabric launches devices x num_nodes processes).
        resume: `auto` (continue the run in out_dir from its latest readable checkpoint, or start one), `true`
            (the same, but a run must exist), `false` (start from step 0) or a checkpoint path.
        overwrite: with `--resume false`, delete the checkpoints of an earlier run in out_dir and start over.
        data: the instruction data (`--data JSON --data.json_path FILE_OR_DIR`; default: Alpaca, downloaded).
        train: training loop settings (train.max_tokens is not supported: sequence lengths vary).
        eval: validation settings (by default also before the first step).
        optimizer: the optimizer and its arguments: `--optimizer AdamW --optimizer.lr 5e-5`,
            `--optimizer.init_args.weight_decay 0.1`, or {class_path, init_args}.
        logger_name: `csv`, `tensorboard` or `wandb`.
        seed: random seed of the data order.
    """
    optimizer = OptimizerSpec.resolve(optimizer)
    devices = check_devices(devices)
    data = default_data(data)
    hparams = hyperparameters(locals())
    plan = prepare(FULL_FILES, checkpoint_dir, out_dir, precision, resume, overwrite, data, train, eval)
    launch(Method("full", FULL_FILES), plan, checkpoint_dir, out_dir, devices, overwrite, train, eval, optimizer,
           logger_name, seed, hparams, num_nodes=num_nodes)
