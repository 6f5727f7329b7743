"""`litgpt download`: fetch a model's tokenizer files from the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json")


def download(
    repo_id: str,
    checkpoint_dir: Path = Path("checkpoints"),
    access_token: Optional[str] = None,
    revision: Optional[str] = None,
) -> Path:
    """Download the tokenizer files of a hub repository into checkpoint_dir/repo_id.

    Args:
        repo_id: the hub repository, e.g. EleutherAI/pythia-160m.
        checkpoint_dir: parent directory of the download.
        access_token: hub token for gated repositories (default: $HF_TOKEN).
        revision: branch, tag or commit (default: main).
    """
    from huggingface_hub import hf_hub_download, list_repo_files

    token = access_token or os.environ.get("HF_TOKEN")
    out_dir = checkpoint_dir / repo_id
    try:
        available = set(list_repo_files(repo_id, revision=revision, token=token))
        wanted = [f for f in TOKENIZER_FILES if f in available]
        if not wanted:
            raise ValueError(f"{repo_id} has none of the tokenizer files {', '.join(TOKENIZER_FILES)}")
        for filename in wanted:
            hf_hub_download(repo_id, filename, revision=revision, token=token, local_dir=out_dir)
    except (OSError, ConnectionError) as e:  # requests' and huggingface_hub's network errors derive from these
        raise ValueError(
            f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}); on a machine without "
            "network access, copy tokenizer.json and tokenizer_config.json into a directory and pass it as "
            "--tokenizer_dir, or train one with `litgpt train_tokenizer`"
        ) from None
    print(f"saved {', '.join(wanted)} to {out_dir}")
    return out_dir
