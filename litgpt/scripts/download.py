"""`litgpt download`: fetch a model's tokenizer files from the Hugging Face hub.

Without network access huggingface_hub retries every request for about half a minute (its backoff is not
configurable) and then raises an httpx error; so the hub is probed once, with a short timeout, before anything
is listed, and every failure ends in a one-line ValueError that names the fix.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json")
HUB_PROBE_TIMEOUT_S = 5.0  # one request; an offline machine fails it at once (no DNS, refused connection)
OFFLINE_FIX = (
    "on a machine without network access, copy tokenizer.json and tokenizer_config.json into a directory and "
    "pass it as --tokenizer_dir, or train one with `litgpt train_tokenizer`"
)
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of a true environment variable


def hub_endpoint() -> str:
    """The hub URL: $HF_ENDPOINT as it is now, else what huggingface_hub read at import (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline_variable() -> Optional[str]:
    """The environment variable that puts the hub in offline mode (HF_HUB_OFFLINE, ...), or None when online."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return name
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE" if constants.is_offline_mode() else None


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a failed hub request raises: OSError (ConnectionError, TimeoutError, huggingface_hub's HTTP
    errors) and the transport errors of httpx2/httpx (huggingface_hub 1.x/2.x), which are not OSErrors."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def hub_unreachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the hub at `endpoint` cannot be reached, or None when it answers (any HTTP status counts).

    One HEAD request through huggingface_hub's own client (so proxies and offline mode apply), without
    retries; it runs in a thread so that a hanging DNS lookup is bounded by `timeout` too.
    """
    from huggingface_hub import get_session

    result: list[Optional[str]] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
            result.append(None)
        except Exception as e:  # any failure to get an answer means: unreachable, and why
            detail = " ".join(str(e).split())[:160]
            result.append(f"{type(e).__name__}: {detail}" if detail else type(e).__name__)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result[0] if result else f"no answer within {timeout:g} s"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


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
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    token = access_token or os.environ.get("HF_TOKEN")
    out_dir = Path(checkpoint_dir) / repo_id
    endpoint = hub_endpoint()
    offline = hub_offline_variable()
    if offline:
        raise ValueError(
            f"could not download {repo_id}: offline mode is on ({offline} is set); unset {offline} to download, or "
            f"{OFFLINE_FIX}"
        )
    problem = hub_unreachable(endpoint)
    if problem:
        raise ValueError(
            f"could not download {repo_id}: no network connection to the Hugging Face hub at {endpoint} ({problem}); "
            f"{OFFLINE_FIX}"
        )
    try:
        available = set(HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision))
        wanted = [f for f in TOKENIZER_FILES if f in available]
        if not wanted:
            raise ValueError(f"{repo_id} has none of the tokenizer files {', '.join(TOKENIZER_FILES)}")
        for filename in wanted:
            hf_hub_download(repo_id, filename, revision=revision, token=token, local_dir=out_dir, endpoint=endpoint)
    except GatedRepoError:
        raise ValueError(
            f"{repo_id} is gated: accept its terms on {endpoint}/{repo_id} and pass --access_token (or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"{repo_id} has no revision {revision!r}; pass an existing branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{repo_id} is not a model repository on {endpoint} (or it is private: pass --access_token); check the name"
        ) from None
    except network_errors() as e:
        raise ValueError(f"could not download {repo_id} from {endpoint} ({_first_line(e)}); {OFFLINE_FIX}") from None
    print(f"saved {', '.join(wanted)} to {out_dir}")
    return out_dir


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("download")
