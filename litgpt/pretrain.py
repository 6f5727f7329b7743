"""`litgpt pretrain`: train a GPT from scratch with Lightning Fabric.

`setup()` checks the arguments, builds Fabric (devices, precision, strategy, loggers) and launches `fit()`, which
builds the tokenizer, data, model and optimizer and runs the loop that `litgpt finetune_*` share (`litgpt.training`:
warmup + cosine learning rate, `train_step`, validation, atomic checkpoints and exact resume: model, optimizer, step
counters, data position and RNG all live in the checkpoint).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import yaml

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs, check_devices
from litgpt.checkpoint import extract_state_dict, read_checkpoint_file
from litgpt.config import Config
from litgpt.data import DataModule, TinyStories
from litgpt.flops import flops_per_token
from litgpt.model import GPT, Block, init_weights
from litgpt.tokenizer import Tokenizer
from litgpt.training import (
    PRECISIONS,
    RUN_DIRS,
    Checkpointer,
    check_same_config,
    delete_run,
    find_resume_checkpoint,
    make_logger,
    resolve_precision,
    run,
)
from litgpt.utils import check_output_spares_inputs, hyperparameters

__all__ = ["PRECISIONS", "check_resume_matches", "fit", "resolve_config", "setup", "typed_model_config"]


def setup(
    model_name: Optional[str] = None,
    model_config: Optional[dict] = None,
    out_dir: Path = Path("out/pretrain"),
    precision: Optional[str] = None,
    initial_checkpoint_dir: Optional[Path] = None,
    resume: Union[bool, Literal["auto"], Path] = "auto",
    overwrite: bool = False,
    data: Optional[DataModule] = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    optimizer: OptimizerArg = "torch.optim.AdamW",
    devices: Union[int, str] = "auto",
    num_nodes: int = 1,
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    tokenizer_dir: Optional[Path] = None,
    logger_name: Literal["csv", "tensorboard", "wandb"] = "csv",
    seed: int = 42,
    compile: bool = False,
) -> None:
    """Pretrain a model.

    Args:
        model_name: a named config (`litgpt.Config.names()`; `litgpt pretrain list` prints them); optional when
            `model_config` is given.
        model_config: config fields; with `model_name` they override that config's fields, alone they define it.
        out_dir: where checkpoints (`step-XXXXXXXX/`, `final/`) and logs go.
        precision: `32-true`, `bf16-mixed`, `bf16-true`, `16-mixed`... (default: bf16-mixed on CUDA, else 32-true).
        initial_checkpoint_dir: start from the weights in this checkpoint directory (without model_name and
            model_config, its model_config.yaml is the model: e.g. to heal a `litgpt convert_to_mla` output).
        resume: `auto` (continue the run in out_dir from its latest readable checkpoint, or start one), `true`
            (the same, but a run must exist), `false` (start from step 0) or a checkpoint path.
        overwrite: with `--resume false`, delete the checkpoints of an earlier run in out_dir and start over
            (without it, an earlier run there is an error rather than overwritten).
        data: the data module (default: TinyStories).
        train: training loop settings.
        eval: validation settings.
        optimizer: the optimizer and its arguments: `--optimizer AdamW --optimizer.lr 3e-4`,
            `--optimizer.init_args.weight_decay 0.1`, or {class_path, init_args}; later options override earlier
            ones and the --config yaml, in command-line order.
        devices: devices per node, or "auto".
        num_nodes: number of nodes.
        strategy: `auto`, `ddp`, or `fsdp` (sharded per Block).
        tokenizer_dir: directory with tokenizer.json / tokenizer.model; if omitted, a byte-level BPE with the
            model's vocab_size is trained on the training text and saved to out_dir/tokenizer.
        logger_name: `csv`, `tensorboard` or `wandb` (the last two need their package installed).
        seed: random seed for weights and data order.
        compile: compile the model with torch.compile.
    """
    if model_name == "list":
        print("\n".join(Config.names()))
        return
    optimizer = OptimizerSpec.resolve(optimizer)
    devices = check_devices(devices)
    model_config = typed_model_config(model_config)
    hparams = hyperparameters(locals())
    # what is named (a model, a checkpoint) is checked before what is missing (a stopping condition)
    if model_name is None and model_config is None and initial_checkpoint_dir is not None:
        config = Config.from_checkpoint(initial_checkpoint_dir)  # continue training that model as it is
    else:
        config = resolve_config(model_name, model_config)
    if train.tie_embeddings is not None:  # the model's tying, recorded in every checkpoint's model_config.yaml
        config = dataclasses.replace(config, tie_embeddings=train.tie_embeddings)
    check_output_spares_inputs(
        "--out_dir", out_dir, {"--initial_checkpoint_dir": initial_checkpoint_dir, "--tokenizer_dir": tokenizer_dir},
        RUN_DIRS,
    )
    train.validate()
    eval.validate()
    if eval.max_new_tokens is not None:
        raise ValueError("eval.max_new_tokens sets the sample a fine-tune generates after each validation; "
                         "pretraining has no instruction to answer: leave it unset (null)")
    precision = resolve_precision(precision)
    if strategy == "fsdp" and not torch.cuda.is_available():
        raise ValueError(
            "--strategy fsdp needs CUDA GPUs (Lightning Fabric runs FSDP on GPU only); on CPU use --strategy ddp"
        )
    if isinstance(resume, Path) and not resume.exists():
        raise FileNotFoundError(f"--resume {str(resume)!r} does not exist")
    if overwrite and resume is not False:
        raise ValueError("--overwrite true starts the run over, so it needs --resume false")
    if initial_checkpoint_dir is not None and not (initial_checkpoint_dir / "lit_model.pth").is_file():
        raise FileNotFoundError(f"--initial_checkpoint_dir {str(initial_checkpoint_dir)!r} has no lit_model.pth")
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"--tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    # which checkpoint a resume starts from, decided before any work: a bad choice fails here in one line
    checkpoint = find_resume_checkpoint(resume, out_dir, overwrite)
    if checkpoint is not None:
        check_resume_matches(checkpoint.parent, config, tokenizer_dir or out_dir / "tokenizer")
    seq_len = train.max_seq_length or config.block_size
    if seq_len > config.block_size:
        raise ValueError(f"train.max_seq_length ({seq_len}) exceeds the model's block_size ({config.block_size})")
    data = TinyStories() if data is None else data

    import lightning as L

    fabric = L.Fabric(
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(strategy),
        precision=precision,
        loggers=[make_logger(logger_name, out_dir)],
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    fabric.launch(
        fit, config=config, out_dir=out_dir, initial_checkpoint_dir=initial_checkpoint_dir, checkpoint=checkpoint,
        overwrite=overwrite, data=data, train=train, eval=eval, optimizer=optimizer, tokenizer_dir=tokenizer_dir,
        seed=seed, compile=compile, seq_len=seq_len, hparams=hparams,
    )


def resolve_config(model_name: Optional[str], model_config: Optional[dict]) -> Config:
    """A named config with `model_config` overriding its fields, or a config built from `model_config` alone: without
    a model_name, or where model_config defines a model of its own under that name (`name: stories15M` with
    `model_name: stories15M`, as upstream litgpt's yamls write a model that is no named config)."""
    if model_name is None and model_config is None:
        raise ValueError("pass a model name (e.g. `litgpt pretrain pythia-160m-mla`) or --model_config")
    model_config = typed_model_config(model_config)
    defines_own = model_config and model_config.get("name") == model_name and model_name not in Config.names()
    if model_name is None or defines_own:
        return Config.from_dict(dict(model_config), source="--model_config")
    overrides = dict(model_config or {})
    name = overrides.pop("name", None)  # from_name's own first parameter: the new name is set after
    config = Config.from_name(model_name, **overrides)
    return config if name is None else dataclasses.replace(config, name=name)


def typed_model_config(model_config: Optional[dict]) -> Optional[dict]:
    """`--model_config.n_layer 2` arrives as the text "2": each text value becomes its `Config` field's type (read as
    yaml: `2`, `1e-5`, `true`, `null`, `{kv_lora_rank: 64}`); a field that takes text keeps it (`name`), unknown
    keys are left for `Config` to refuse by name, and values of other types are kept as they are."""
    if not model_config:
        return model_config
    hints = typing.get_type_hints(Config)
    return {
        key: _typed(value, hints[key]) if isinstance(value, str) and key in hints else value
        for key, value in model_config.items()
    }


def _typed(text: str, hint: Any) -> Any:
    import yaml

    options = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    if type(None) in options and text.strip() in ("null", "None", "~", ""):
        return None
    if any(_takes_text(option) for option in options):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # Config names the field and the text it cannot use
    if isinstance(value, str) and float in options:
        try:
            return float(text)  # yaml 1.1 reads 1e-5 (no dot) as text
        except ValueError:
            pass
    return value


def _takes_text(hint: Any) -> bool:
    if hint is str:
        return True
    return typing.get_origin(hint) is Literal and all(isinstance(v, str) for v in typing.get_args(hint))


def fit(
    fabric: Any,
    config: Config,
    out_dir: Path,
    initial_checkpoint_dir: Optional[Path],
    checkpoint: Optional[Path],
    overwrite: bool,
    data: DataModule,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: OptimizerSpec,
    tokenizer_dir: Optional[Path],
    seed: int,
    compile: bool,
    seq_len: int,
    hparams: dict,
) -> None:
    """Build the tokenizer, data, model and optimizer and run the training loop (`litgpt.training.run`), in every
    process that `setup` launches (arguments as `setup` resolved them)."""
    fabric.seed_everything(seed)
    if overwrite:
        delete_run(fabric, out_dir)
    tokenizer = _tokenizer(fabric, tokenizer_dir, data, config, out_dir)
    data.connect(tokenizer, max_seq_length=seq_len)
    with fabric.rank_zero_first():
        data.prepare_data()
    data.setup()
    train_data, val_data = data.train_dataset(), data.val_dataset()

    model = GPT(config)
    init_weights(model)
    if initial_checkpoint_dir is not None:
        weights = initial_checkpoint_dir / "lit_model.pth"
        model.load_state_dict(extract_state_dict(read_checkpoint_file(weights), str(weights)))
    model.max_seq_length = seq_len
    n_params = sum(p.numel() for p in model.parameters())
    fabric.print(f"model {config.name or '(custom)'}: {n_params / 1e6:.1f}M parameters, sequence length {seq_len}")
    if compile:
        model = torch.compile(model)
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(optimizer.build(model.parameters(), fabric.device))
    run(
        fabric, model, opt, checkpoint, train_data, val_data, train=train, eval=eval, seed=seed, out_dir=out_dir,
        checkpointer=Checkpointer(fabric, tokenizer, config, hparams), loader_workers=data.loader_workers,
        tokens_per_step=train.global_batch_size * seq_len, flops_per_token=flops_per_token(config, seq_len),
    )


# ------------------------------------------------------------------------------------ resume checks
def check_resume_matches(checkpoint_dir: Path, config: Config, tokenizer_dir: Path) -> None:
    """Refuse to resume a checkpoint with another model config or another tokenizer than the run started with."""
    check_same_config(checkpoint_dir, config)
    started_with = Tokenizer(checkpoint_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "tokenizer.model").is_file():
        raise ValueError(
            f"cannot resume {checkpoint_dir}: the run's tokenizer is not in {str(tokenizer_dir)!r}; pass "
            f"--tokenizer_dir {_started_tokenizer_dir(checkpoint_dir)} (a copy is in {checkpoint_dir})"
        )
    if Tokenizer(tokenizer_dir).fingerprint != started_with.fingerprint:
        raise ValueError(
            f"cannot resume {checkpoint_dir}: --tokenizer_dir {str(tokenizer_dir)!r} is not the tokenizer the run "
            f"started with; pass --tokenizer_dir {_started_tokenizer_dir(checkpoint_dir)}, or train into another "
            "--out_dir"
        )


def _started_tokenizer_dir(checkpoint_dir: Path) -> str:
    hparams_file = checkpoint_dir / "hyperparameters.yaml"
    hparams = yaml.safe_load(hparams_file.read_text(encoding="utf-8")) if hparams_file.is_file() else {}
    return str((hparams or {}).get("tokenizer_dir") or checkpoint_dir)


# ---------------------------------------------------------------------------------------- builders
def _tokenizer(fabric: Any, tokenizer_dir: Optional[Path], data: DataModule, config: Config, out_dir: Path) -> Tokenizer:
    if tokenizer_dir is None:
        tokenizer_dir = out_dir / "tokenizer"
        if fabric.global_rank == 0 and not (tokenizer_dir / "tokenizer.json").is_file():
            from litgpt.scripts.train_tokenizer import train_tokenizer

            fabric.print(f"no --tokenizer_dir: training a {config.vocab_size}-token BPE on the training text")
            train_tokenizer(data=data, out_dir=tokenizer_dir, vocab_size=config.vocab_size)
        fabric.barrier()
    tokenizer = Tokenizer(tokenizer_dir)
    if tokenizer.vocab_size > config.padded_vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's padded_vocab_size is "
            f"{config.padded_vocab_size}; set --model_config.vocab_size to at least {tokenizer.vocab_size}"
        )
    return tokenizer


def _strategy(name: str) -> Any:
    if name == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", sharding_strategy="FULL_SHARD")
    return name
