"""TinyStories without network, through the real `datasets`: a fast one-line error, or the cached copy."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from huggingface_hub import constants

from litgpt.data import TinyStories

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: connections are refused at once
HINT = ("pass --data.data_path DIR with local TinyStories files (.json/.jsonl/.parquet/.txt), or use --data TextFiles "
        "--data.train_data_path DIR with plain .txt files")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An unreachable hub, an empty datasets cache and no offline mode (datasets and huggingface_hub read these
    variables at import, so their module constants are set as well)."""
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    return monkeypatch


def load_error(tmp_path) -> tuple[str, float]:
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        list(TinyStories(cache_dir=tmp_path / "cache").iter_texts("train"))
    return str(info.value), time.perf_counter() - start


def test_unreachable_hub_fails_fast_in_one_line(no_network, tmp_path):
    message, elapsed = load_error(tmp_path)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "\n" not in message
    assert message.startswith("could not download roneneldan/TinyStories (no network?): no network connection to the "
                              f"Hugging Face hub at {UNREACHABLE} (ConnectError: ")
    assert message.endswith(f") and it is not in the datasets cache; {HINT}")
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False  # switched back


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_mode_is_named(no_network, tmp_path, variable):
    no_network.setenv(variable, "1")
    message, elapsed = load_error(tmp_path)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert message == (f"could not download roneneldan/TinyStories (no network?): offline mode is on ({variable} is "
                       f"set) and it is not in the datasets cache; {HINT}")


def test_cached_copy_loads_without_network(no_network, tmp_path):
    """What `load_dataset` cached on an earlier, online run is used offline, without waiting for retries."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    stories = {"train": [f"Once upon a time {i}." for i in range(5)], "validation": ["The end.", "Bye."]}
    for split, texts in stories.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    files = DataFilesDict.from_patterns({s: [f"{s}.jsonl"] for s in stories}, base_path=str(tmp_path))
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    Json(cache_dir=str(cache), dataset_name="tiny_stories", data_files=files, hash="0123abcd").download_and_prepare()
    # lay it out as the hub dataset's cache: <namespace>___<name>/<config>/<version>/<hash>
    built = next((cache / "tiny_stories").iterdir())
    built.rename(cache / "tiny_stories" / "default")
    (cache / "tiny_stories").rename(cache / "roneneldan___tiny_stories")
    start = time.perf_counter()
    data = TinyStories(cache_dir=tmp_path / "cache")
    assert list(data.iter_texts("train")) == stories["train"]
    assert list(data.iter_texts("val")) == stories["validation"]
    assert time.perf_counter() - start < 10


def test_cli_pretrain_offline_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*OFFLINE_VARIABLES, "LITGPT_DEBUG")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    command = [sys.executable, "-m", "litgpt", "pretrain", "debug", "--data", "TinyStories", "--data.cache_dir",
               str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), "--train.max_steps", "1"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "litgpt: error: could not download roneneldan/TinyStories (no network?): no network connection to the Hugging "
        f"Face hub at {UNREACHABLE} (ConnectError: [Errno 111] Connection refused) and it is not in the datasets "
        f"cache; {HINT}"
    )
    assert elapsed < 30, f"took {elapsed:.1f} s"  # mostly the CLI's imports
