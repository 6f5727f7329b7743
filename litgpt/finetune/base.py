"""What full and LoRA fine-tuning share: the checks, the base checkpoint, the masked loss, and the run.

`prepare` checks a command's arguments before any work (one-line errors) and decides the checkpoint to resume from;
`launch` builds Fabric and runs `fit` in every process: the base checkpoint's tokenizer and weights, the `Method`'s
change to the model (LoRA layers, or none), the optimizer over the trainable parameters, then the loop of
`litgpt pretrain` (`litgpt.training.run`) with the `sft_objective`: next-token cross-entropy over the padded
batch, prompt and padding positions carrying no weight; with eval.max_new_tokens, `generate_example` prints the
model's answer to a validation prompt after each validation.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch

from litgpt.args import EvalArgs, OptimizerSpec, TrainArgs
from litgpt.checkpoint import load_checkpoint
from litgpt.config import Config
from litgpt.data.sft import SFTDataModule, SFTDataset
from litgpt.loss import IGNORE_INDEX
from litgpt.model import GPT
from litgpt.quantize import compute_dtype
from litgpt.tokenizer import Tokenizer
from litgpt.training import (
    RUN_DIRS,
    Checkpointer,
    Objective,
    RunFiles,
    check_same_config,
    delete_run,
    find_resume_checkpoint,
    make_logger,
    resolve_precision,
    run,
)
from litgpt.utils import check_output_spares_inputs

logger = logging.getLogger(__name__)

# The temperature of the sample answer generated after each validation when eval.max_new_tokens is set
SAMPLE_TEMPERATURE = 0.8
# The loop defaults of a fine-tune (upstream litgpt's): 16 sequences per step, 5 epochs, cosine to 0.
FINETUNE_TRAIN = TrainArgs(save_interval=1000, log_interval=1, global_batch_size=16, micro_batch_size=1,
                           lr_warmup_steps=100, epochs=5, min_lr=0.0)
FINETUNE_EVAL = EvalArgs(interval=100, max_iters=100, initial_validation=True, final_validation=True)
Resume = Union[bool, Literal["auto"], Path]


# ---------------------------------------------------------------------------------------------- the loss
def sft_loss(model: torch.nn.Module, batch: dict[str, Any], ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[:, 1:] from input_ids[:, :-1] over the targets that are not
    `ignore_index` (a masked prompt, padding); batch as `litgpt.data.sft.pad_collate` makes it."""
    input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T), (B, T)
    targets = labels[:, 1:]  # (B, T - 1)
    if ignore_index != IGNORE_INDEX:  # the model's loss ignores IGNORE_INDEX
        targets = targets.masked_fill(targets == ignore_index, IGNORE_INDEX)
    return model(input_ids[:, :-1], targets=targets)  # ()


def sft_tokens(batch: dict[str, Any]) -> int:
    """Tokens of a padded batch, padding excluded (counted by the collate function, on the host)."""
    return batch["tokens"]


def sft_objective(ignore_index: int = IGNORE_INDEX) -> Objective:
    return Objective(functools.partial(sft_loss, ignore_index=ignore_index), sft_tokens)


# ---------------------------------------------------------------------------------------------- the methods
@dataclass(frozen=True)
class Method:
    """How a fine-tune trains its base model.

    `adapt(model)` changes the loaded model in place and leaves exactly the parameters to train with
    requires_grad (None: all of them train); `mark_trainable(model)` does that again after Fabric's setup (a
    quantization plugin's new layers may come back trainable); `state_filter(name, tensor)` picks the model entries
    its checkpoints keep (None: all); `finalize(final_dir)` completes the final checkpoint directory before it is
    moved in place.
    """

    name: str
    files: RunFiles
    adapt: Optional[Callable[[GPT], None]] = None
    mark_trainable: Optional[Callable[[torch.nn.Module], None]] = None
    state_filter: Optional[Callable[[str, Any], bool]] = None
    finalize: Optional[Callable[[Path], None]] = None


@dataclass(frozen=True)
class Plan:
    """A fine-tune's arguments as `prepare` resolved and checked them."""

    config: Config
    checkpoint: Optional[Path]  # the training state to resume from, None to start at step 0
    precision: str
    seq_len: int
    data: SFTDataModule


def check_base_checkpoint(checkpoint_dir: Path) -> Config:
    """The model config of the checkpoint to fine-tune; one-line errors for a missing directory or file."""
    if not checkpoint_dir.is_dir():
        from litgpt.hub import CHECKPOINTS_ROOT, is_repo_id

        parts = checkpoint_dir.parts
        repo_id = "/".join(parts[-2:])
        if len(parts) == 3 and Path(parts[0]) == CHECKPOINTS_ROOT and is_repo_id(repo_id):  # where downloads go
            fix = f"download the model with `litgpt download {repo_id}`, or point at another checkpoint"
        else:
            fix = "point at a model to fine-tune, e.g. the final/ directory of a `litgpt pretrain` run"
        raise FileNotFoundError(f"checkpoint directory {str(checkpoint_dir)!r} does not exist; {fix}")
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(
                f"checkpoint directory {str(checkpoint_dir)!r} has no {name}; point at a directory written by "
                "`litgpt pretrain`, a fine-tune's final/ or a conversion script"
            )
    Tokenizer(checkpoint_dir)  # a one-line error when the tokenizer files are missing
    return Config.from_checkpoint(checkpoint_dir)


def prepare(
    files: RunFiles,
    checkpoint_dir: Path,
    out_dir: Path,
    precision: Optional[str],
    resume: Resume,
    overwrite: bool,
    data: SFTDataModule,
    train: TrainArgs,
    eval: EvalArgs,
) -> Plan:
    """Check a fine-tune's arguments before any work and pick the checkpoint it resumes from. What is named (the
    checkpoint, out_dir) is checked before what is missing (a stopping condition)."""
    config = check_base_checkpoint(checkpoint_dir)
    check_output_spares_inputs("--out_dir", out_dir, {"--checkpoint_dir": checkpoint_dir}, RUN_DIRS)
    train.validate()
    eval.validate()
    if train.tie_embeddings is not None and train.tie_embeddings != config.tie_embeddings:
        raise ValueError(
            f"train.tie_embeddings {str(train.tie_embeddings).lower()}: a fine-tune keeps the tying of its checkpoint "
            f"(tie_embeddings: {str(config.tie_embeddings).lower()} in {checkpoint_dir / 'model_config.yaml'}); "
            "leave train.tie_embeddings unset (null)"
        )
    if train.max_tokens is not None:
        raise ValueError("train.max_tokens is not supported by fine-tuning (its sequences have different lengths); "
                         "set train.max_steps, train.epochs or train.max_time")
    precision = resolve_precision(precision)
    if isinstance(resume, Path) and not resume.exists():
        raise FileNotFoundError(f"--resume {str(resume)!r} does not exist")
    if overwrite and resume is not False:
        raise ValueError("--overwrite true starts the run over, so it needs --resume false")
    seq_len = train.max_seq_length or config.block_size
    if seq_len > config.block_size:
        raise ValueError(f"train.max_seq_length ({seq_len}) exceeds the model's block_size ({config.block_size})")
    checkpoint = find_resume_checkpoint(resume, out_dir, overwrite, files)
    if checkpoint is not None:
        check_same_config(checkpoint.parent, config)
        if Tokenizer(checkpoint.parent).fingerprint != Tokenizer(checkpoint_dir).fingerprint:
            raise ValueError(
                f"cannot resume {checkpoint.parent}: its tokenizer is not the one in {str(checkpoint_dir)!r}; "
                "fine-tune the checkpoint the run started from, or train into another --out_dir"
            )
    return Plan(config, checkpoint, precision, seq_len, data)


def default_data(data: Optional[SFTDataModule]) -> SFTDataModule:
    """`--data`, Alpaca when not given."""
    if data is not None:
        return data
    from litgpt.data.alpaca import Alpaca

    return Alpaca()


def launch(
    method: Method,
    plan: Plan,
    checkpoint_dir: Path,
    out_dir: Path,
    devices: Union[int, str],
    overwrite: bool,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: OptimizerSpec,
    logger_name: str,
    seed: int,
    hparams: dict,
    plugins: Optional[Any] = None,
    num_nodes: int = 1,
) -> None:
    """Build Fabric (`plugins`, e.g. a quantization plugin, replace `plan.precision`) and run `fit` on every device
    of the `num_nodes` nodes."""
    import lightning as L

    fabric = L.Fabric(
        devices=devices,
        num_nodes=num_nodes,
        precision=None if plugins is not None else plan.precision,
        plugins=plugins,
        loggers=[make_logger(logger_name, out_dir)],
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    fabric.launch(
        fit, method=method, plan=plan, checkpoint_dir=checkpoint_dir, out_dir=out_dir, overwrite=overwrite,
        train=train, eval=eval, optimizer=optimizer, seed=seed, hparams=hparams,
    )


def fit(
    fabric: Any,
    method: Method,
    plan: Plan,
    checkpoint_dir: Path,
    out_dir: Path,
    overwrite: bool,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: OptimizerSpec,
    seed: int,
    hparams: dict,
) -> None:
    """The fine-tune, run by every process that `launch` starts."""
    fabric.seed_everything(seed)
    if overwrite:
        delete_run(fabric, out_dir, method.files)
    data = plan.data
    tokenizer = Tokenizer(checkpoint_dir)
    data.connect(tokenizer, max_seq_length=plan.seq_len)
    with fabric.rank_zero_first():
        data.prepare_data()
    data.setup()
    train_data, val_data = data.train_dataset(), data.val_dataset()

    # float32 master weights, which Fabric's precision plugin casts (bf16-true, 64-true) in setup; a quantization
    # plugin quantizes only the linears, so the model loads in its compute dtype (`litgpt.quantize.compute_dtype`)
    model = load_checkpoint(checkpoint_dir, dtype=compute_dtype(fabric.strategy.precision) or torch.float32)
    model.max_seq_length = plan.seq_len
    if method.adapt is not None:
        method.adapt(model)
    n_total = sum(p.numel() for p in model.parameters())  # before a quantization plugin packs the weights
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = fabric.setup(model)
    if method.mark_trainable is not None:
        method.mark_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fabric.print(
        f"{method.name} fine-tuning {plan.config.name or '(custom)'} from {checkpoint_dir}: {n_trainable:,} of "
        f"{n_total:,} parameters trainable, {len(train_data):,} training samples of up to {plan.seq_len} tokens"
    )
    opt = fabric.setup_optimizers(optimizer.build(trainable, fabric.device))
    checkpointer = Checkpointer(
        fabric, tokenizer, plan.config, hparams, files=method.files, model_filter=method.state_filter,
        prompt_style=data.style, finalize=method.finalize,
    )
    sample = None
    if eval.max_new_tokens is not None:
        example_index(eval.evaluate_example, len(val_data), seed)  # an index past the records fails before training
        sample = functools.partial(generate_example, fabric, model, tokenizer, val_data, eval, data.style, seed)
    run(
        fabric, model, opt, plan.checkpoint, train_data, val_data, train=train, eval=eval, seed=seed,
        out_dir=out_dir, checkpointer=checkpointer, objective=sft_objective(data.ignore_index),
        collate_fn=data.collate_fn, loader_workers=data.loader_workers, after_validation=sample,
    )


# ---------------------------------------------------------------------------------------------- the sample answer
def example_index(evaluate_example: Union[str, int], n_records: int, seed: int) -> int:
    """The validation record whose prompt the sample answers: eval.evaluate_example "first", "random" (drawn from
    `seed`, so every process and a resumed run pick the same) or an index."""
    if evaluate_example == "first":
        return 0
    if evaluate_example == "random":
        return random.Random(seed).randrange(n_records)
    if not 0 <= evaluate_example < n_records:
        raise ValueError(f"eval.evaluate_example {evaluate_example} is not a validation record index (there are "
                         f"{n_records}); pass first, random or an index below {n_records}")
    return evaluate_example


@torch.no_grad()
def generate_example(
    fabric: Any, model: torch.nn.Module, tokenizer: Tokenizer, val_data: SFTDataset, eval: EvalArgs, style: Any,
    seed: int, step: int,
) -> Optional[list[int]]:
    """After a validation: the model's answer (at most eval.max_new_tokens ids, sampled at SAMPLE_TEMPERATURE up to
    the prompt style's stop tokens) to the prompt of the validation record eval.evaluate_example picks, printed with
    the prompt and returned. Every process generates (a wrapped model's forward may need them all); the sampler
    draws from its own hashed stream, so training's random state is untouched. None, with a warning, when prompt and
    answer do not fit the training sequence length."""
    from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate

    index = example_index(eval.evaluate_example, len(val_data), seed + step)
    ids, prompt_length = val_data.samples[index]
    prompt = ids[:prompt_length]  # (P,): the framed prompt, as training tokenized it
    cache_len = prompt_length + eval.max_new_tokens
    if cache_len > model.max_seq_length:
        logger.warning("no sample at step %d: validation record %d's prompt (%d tokens) + eval.max_new_tokens (%d) "
                       "exceed the training sequence length %d", step, index, prompt_length, eval.max_new_tokens,
                       model.max_seq_length)
        return None
    model.eval()
    model.set_kv_cache(1, max_seq_length=cache_len)
    try:
        sampler = Sampler(SamplingParams(temperature=SAMPLE_TEMPERATURE), model.config.vocab_size, 1, fabric.device)
        sampler.seed(seed + step)
        rows, _ = generate(model, [prompt], eval.max_new_tokens, sampler, DecodeStep(model, sampler, "eager"),
                           stop_tokens=style.stop_tokens(tokenizer))
    finally:
        model.clear_kv_cache()
        model.train()
    fabric.print(f"step {step}: sample answer to validation record {index}:\n{tokenizer.decode(prompt)}"
                 f"{tokenizer.decode(rows[0])}")
    return rows[0]
