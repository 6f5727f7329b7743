"""`litgpt download ORG/NAME`: fetch a model from the Hugging Face hub into `checkpoints/ORG/NAME` and convert it.

The weights (the safetensors, else the pytorch_model*.bin files, with their index), config.json,
generation_config.json and the tokenizer files are fetched, then converted by
`litgpt.scripts.convert_hf_checkpoint` into lit_model.pth + model_config.yaml beside them. `--tokenizer_only true`
fetches only the tokenizer files; `--convert_checkpoint false` skips the conversion; `--source_dir DIR` takes the files
from a local Hugging Face model directory instead of the hub (offline). `litgpt download list` prints the named models
(`litgpt.Config.names()`) with their hub ids.

Without network access huggingface_hub retries every request for about half a minute (its backoff is not
configurable) and then raises an httpx error; so the hub is probed once, with a short timeout, before anything
is listed, and every failure ends in a one-line ValueError that names the fix.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

from litgpt.hub import is_repo_id
from litgpt.tokenizer import TOKENIZER_FILES

MODEL_FILES = ("config.json", "generation_config.json")  # besides the tokenizer files and the weights
WEIGHT_INDEXES = {".safetensors": "model.safetensors.index.json", ".bin": "pytorch_model.bin.index.json"}
DOWNLOAD_WORKERS = 8  # files fetched at once (a sharded checkpoint's shards)
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


def named_models() -> dict[str, str]:
    """Hub id -> the named config (`litgpt.Config.names()`) of that model: the config named as the repository, else
    the first name (the -gqa/-mla variants of a config carry their base's hub id but are other models)."""
    from litgpt.config import Config, named_config

    out: dict[str, str] = {}
    for name in Config.names():
        hf = (named_config(name) or {}).get("hf_config") or {}
        if not hf.get("org") or not hf.get("name"):
            continue
        repo = f"{hf['org']}/{hf['name']}"
        if repo not in out or name == hf["name"]:
            out[repo] = name
    return dict(sorted(out.items(), key=lambda item: item[0].lower()))


def format_model_list() -> str:
    """`litgpt download list`: one line per named model, its hub id and its config name."""
    models = named_models()
    width = max((len(repo) for repo in models), default=0)
    lines = [f"{repo:<{width}}  {name}" for repo, name in models.items()]
    return "\n".join(["Named models (`litgpt download ORG/NAME`; any other hub model of a supported architecture "
                      "converts too):", *lines])


def select_files(names: Iterable[str], tokenizer_only: bool = False) -> list[str]:
    """Of a repository's files, those to fetch: tokenizer files, config.json, generation_config.json and the weights
    (the top-level *.safetensors with their index, else the pytorch_model*.bin files with theirs); with
    `tokenizer_only`, the tokenizer files alone. Files in subfolders (`original/`) are not fetched."""
    top = sorted(n for n in names if "/" not in n)
    wanted = [n for n in TOKENIZER_FILES if n in top]
    if tokenizer_only:
        return wanted
    wanted += [n for n in MODEL_FILES if n in top and n not in wanted]
    for suffix, pattern in ((".safetensors", "*.safetensors"), (".bin", "pytorch_model*.bin")):
        weights = [n for n in top if fnmatch.fnmatchcase(n, pattern)]
        if weights:
            return wanted + weights + [n for n in top if n == WEIGHT_INDEXES[suffix]]
    return wanted


def _check_selection(repo_id: str, where: str, available: set[str], wanted: list[str], tokenizer_only: bool) -> None:
    if tokenizer_only:
        if not wanted:
            raise ValueError(f"{repo_id} has none of the tokenizer files {', '.join(TOKENIZER_FILES)} ({where})")
        return
    if "config.json" not in wanted:
        raise ValueError(f"{repo_id} has no config.json ({where}): it is not a transformers model; pass "
                         "--tokenizer_only true to fetch its tokenizer files alone")
    if not any(n.endswith((".safetensors", ".bin")) for n in wanted):
        raise ValueError(f"{repo_id} has no *.safetensors or pytorch_model*.bin weights at its top level ({where}); "
                         "pass --tokenizer_only true to fetch its tokenizer files alone")


def fetch_from_hub(repo_id: str, out_dir: Path, tokenizer_only: bool, token: Optional[str],
                   revision: Optional[str]) -> list[str]:
    """Fetch the files `select_files` picks from the hub into out_dir (the hub probed first: offline fails fast in one
    line); returns their names. huggingface_hub writes each file atomically and skips those already there."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

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
        wanted = select_files(available, tokenizer_only)
        _check_selection(repo_id, f"on {endpoint}", available, wanted, tokenizer_only)

        def fetch(filename: str) -> None:
            hf_hub_download(repo_id, filename, revision=revision, token=token, local_dir=out_dir, endpoint=endpoint)

        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, len(wanted))) as pool:
            list(pool.map(fetch, wanted))  # re-raises the first failure
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
    return wanted


def copy_from_dir(repo_id: str, source_dir: Path, out_dir: Path, tokenizer_only: bool) -> list[str]:
    """Put the files `select_files` picks from a local Hugging Face model directory into out_dir: hard links where
    the file system allows, else copies (each written under a temporary name, then renamed); returns their names."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"--source_dir {str(source_dir)!r} is not a directory; point at a local Hugging Face "
                                "model directory (config.json, weights, tokenizer files)")
    available = {p.name for p in source_dir.iterdir() if p.is_file()}
    wanted = select_files(available, tokenizer_only)
    _check_selection(repo_id, f"in --source_dir {source_dir}", available, wanted, tokenizer_only)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() == source_dir.resolve():
        return wanted
    for name in wanted:
        src, dst = source_dir / name, out_dir / name
        if dst.exists() and dst.samefile(src):
            continue
        tmp = dst.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
            except OSError:  # another file system, or links not allowed: copy
                from litgpt.utils import no_space_errors

                with no_space_errors(dst):
                    shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return wanted


def _check_dtype(dtype: Optional[str]) -> None:
    import torch

    if dtype is not None and not (isinstance(getattr(torch, dtype.removeprefix("torch."), None), torch.dtype)
                                  and getattr(torch, dtype.removeprefix("torch.")).is_floating_point):
        raise ValueError(f"--dtype must name a torch floating point type (e.g. float32, bfloat16), got {dtype!r}")


def _name_model(out_dir: Path, name: str) -> None:
    """Set the `name` of out_dir's converted model_config.yaml (written atomically)."""
    from litgpt.checkpoint import save_config
    from litgpt.config import Config

    config = Config.from_file(out_dir / "model_config.yaml")
    if config.name != name:
        config.name = name
        save_config(config, out_dir)


def download(
    repo_id: str,
    checkpoint_dir: Path = Path("checkpoints"),
    access_token: Optional[str] = None,
    revision: Optional[str] = None,
    tokenizer_only: bool = False,
    convert_checkpoint: bool = True,
    dtype: Optional[str] = None,
    model_name: Optional[str] = None,
    source_dir: Optional[Path] = None,
) -> Optional[Path]:
    """Download a hub model into checkpoint_dir/repo_id and convert it into a litgpt checkpoint.

    Args:
        repo_id: the hub repository, e.g. EleutherAI/pythia-160m; `list` prints the named models and their hub ids.
        checkpoint_dir: parent directory of the download (the model lands in checkpoint_dir/ORG/NAME).
        access_token: hub token for gated repositories (default: $HF_TOKEN).
        revision: branch, tag or commit (default: main).
        tokenizer_only: fetch only the tokenizer files (no weights, no conversion).
        convert_checkpoint: convert the fetched weights into lit_model.pth + model_config.yaml (false: keep the
            Hugging Face files alone; `litgpt convert_to_litgpt DIR` converts them later).
        dtype: cast the converted weights to this torch dtype, e.g. bfloat16 (default: keep the stored dtype).
        model_name: the name the converted model's config takes (default: the named config of repo_id, see
            `litgpt download list`, else the repository's name). Any repository of a supported architecture
            converts, named config or not: the config is read from its config.json.
        source_dir: take the files from this local Hugging Face model directory instead of the hub (no network).

    Returns:
        The model's directory (None for `list`).
    """
    if repo_id == "list":
        print(format_model_list())
        return None
    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id ORG/NAME (e.g. EleutherAI/pythia-160m); run "
                         "`litgpt download list` for the named models")
    _check_dtype(dtype)
    token = access_token or os.environ.get("HF_TOKEN")
    out_dir = Path(checkpoint_dir) / repo_id
    if source_dir is not None:
        fetched = copy_from_dir(repo_id, Path(source_dir), out_dir, tokenizer_only)
    else:
        fetched = fetch_from_hub(repo_id, out_dir, tokenizer_only, token, revision)
    print(f"saved {', '.join(fetched)} to {out_dir}")
    if tokenizer_only or not convert_checkpoint:
        return out_dir
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

    convert_hf_checkpoint(out_dir, dtype=dtype)
    _name_model(out_dir, model_name or named_models().get(repo_id) or repo_id.split("/")[1])
    print(f"converted {repo_id} to {out_dir / 'lit_model.pth'}; try `litgpt generate {repo_id}`")
    return out_dir


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("download")
