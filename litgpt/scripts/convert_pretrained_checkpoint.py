"""`litgpt convert_pretrained_checkpoint`: a `litgpt pretrain` checkpoint (lit_model.pth holding the model, the
optimizer state and the counters) as a plain checkpoint: lit_model.pth with the model's weights alone, beside
model_config.yaml, the tokenizer files and prompt_style.yaml. The result loads like a converted model
(`litgpt generate`, `litgpt finetune_*`, `--initial_checkpoint_dir`) at a fraction of the size (AdamW keeps two
more tensors per weight).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from litgpt.checkpoint import atomic_torch_save, extract_state_dict, read_checkpoint_file, save_config
from litgpt.config import Config
from litgpt.utils import atomic_write, check_output_spares_inputs

# copied along with the weights when present (the tokenizer files, then the prompt style)
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "generation_config.json", "prompt_style.yaml")


def convert_pretrained_checkpoint(checkpoint_dir: Path, output_dir: Path) -> Path:
    """Write the weights of a pretraining checkpoint as a plain checkpoint directory.

    Args:
        checkpoint_dir: a checkpoint directory that `litgpt pretrain` wrote (`out/pretrain/NAME/final` or a
            `step-XXXXXXXX`): lit_model.pth ({"model": ..., "optimizer": ..., ...}) and model_config.yaml.
        output_dir: where to write lit_model.pth (the weights alone), model_config.yaml and the tokenizer files.

    Returns:
        The output directory.
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"--checkpoint_dir {str(checkpoint_dir)!r} is not a directory; point at a "
                                "`litgpt pretrain` checkpoint (e.g. out/pretrain/NAME/final)")
    if not (checkpoint_dir / "model_config.yaml").is_file():
        raise FileNotFoundError(f"--checkpoint_dir {str(checkpoint_dir)!r} has no model_config.yaml; point at a "
                                "`litgpt pretrain` checkpoint (e.g. out/pretrain/NAME/final)")
    check_output_spares_inputs("--output_dir", output_dir, {"--checkpoint_dir": checkpoint_dir}, replaced=())
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    weights = checkpoint_dir / "lit_model.pth"
    state_dict = extract_state_dict(read_checkpoint_file(weights), source=str(weights))
    _check_matches(state_dict, config, weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state_dict, output_dir / "lit_model.pth")
    save_config(config, output_dir)
    copied = []
    for name in COPIED_FILES:
        if (checkpoint_dir / name).is_file():
            atomic_write(output_dir / name, lambda tmp, src=checkpoint_dir / name: shutil.copyfile(src, tmp))
            copied.append(name)
    print(f"wrote {output_dir / 'lit_model.pth'} ({len(state_dict)} tensors), model_config.yaml"
          f"{''.join(', ' + name for name in copied)}")
    return output_dir


def _check_matches(state_dict: dict, config: Config, weights: Path) -> None:
    """The weights are the model's that model_config.yaml describes: the same names and shapes."""
    import torch

    from litgpt.model import GPT

    with torch.device("meta"):
        expected = GPT(config).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        what = f"no {missing[0]!r}" if missing else f"an unexpected {unexpected[0]!r}"
        raise ValueError(f"{weights} does not hold the model of model_config.yaml ({what}); point at the checkpoint "
                         "directory this config belongs to")
    for key, ref in expected.items():
        if state_dict[key].shape != ref.shape:
            raise ValueError(f"{weights}: {key!r} is {tuple(state_dict[key].shape)} but model_config.yaml implies "
                             f"{tuple(ref.shape)}; point at the checkpoint directory this config belongs to")


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("convert_pretrained_checkpoint")
