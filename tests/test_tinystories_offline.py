"""TinyStories without network, through the real `datasets`: a one-line error after one connection attempt (the
probe; none in offline mode), or the cached copy without any."""

import json
import os
from pathlib import Path

import datasets
import pytest
from huggingface_hub import constants

from litgpt.data import TinyStories
from litgpt.scripts.download import HUB_PROBE_TIMEOUT_S
from test_download import connections, run_counted_cli  # noqa: F401  (a fixture)

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


@pytest.fixture
def load_dataset_calls(monkeypatch) -> list[dict]:
    """datasets.load_dataset's calls while the test runs, each with the offline mode it ran under."""
    calls = []
    load_dataset = datasets.load_dataset

    def counted(*args, **kwargs):
        calls.append(dict(args=args, offline=bool(datasets.config.HF_HUB_OFFLINE)))
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counted)
    return calls


def load_error(tmp_path) -> str:
    with pytest.raises(ConnectionError) as info:
        list(TinyStories(cache_dir=tmp_path / "cache").iter_texts("train"))
    return str(info.value)


def test_unreachable_hub_fails_fast_in_one_line(no_network, tmp_path, connections, load_dataset_calls):
    message = load_error(tmp_path)
    # the probe's one attempt, then `datasets` asked once, in offline mode (its cache only): nothing retried
    assert connections == [(("127.0.0.1", 9), HUB_PROBE_TIMEOUT_S)]
    assert load_dataset_calls == [dict(args=("roneneldan/TinyStories",), offline=True)]
    assert "\n" not in message
    assert message.startswith("could not download roneneldan/TinyStories (no network?): no network connection to the "
                              f"Hugging Face hub at {UNREACHABLE} (ConnectError: ")
    assert message.endswith(f") and it is not in the datasets cache; {HINT}")
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False  # switched back


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_mode_is_named(no_network, tmp_path, variable, connections, load_dataset_calls):
    no_network.setenv(variable, "1")
    message = load_error(tmp_path)
    assert connections == []  # offline: not even the probe
    assert load_dataset_calls == [dict(args=("roneneldan/TinyStories",), offline=True)]
    assert message == (f"could not download roneneldan/TinyStories (no network?): offline mode is on ({variable} is "
                       f"set) and it is not in the datasets cache; {HINT}")


def test_cached_copy_loads_without_network(no_network, tmp_path, connections):
    """What `load_dataset` cached on an earlier, online run is used offline: after the probe's one attempt, no
    request at all (none to wait for or retry)."""
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
    connections.clear()  # building the cache above made none; only the load's count
    data = TinyStories(cache_dir=tmp_path / "cache")
    assert list(data.iter_texts("train")) == stories["train"]
    assert list(data.iter_texts("val")) == stories["validation"]
    assert connections == [(("127.0.0.1", 9), HUB_PROBE_TIMEOUT_S)]


def test_cli_pretrain_offline_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*OFFLINE_VARIABLES, "LITGPT_DEBUG")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    command = ["pretrain", "debug", "--data", "TinyStories", "--data.cache_dir",
               str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), "--train.max_steps", "1"]
    result, attempts = run_counted_cli(command, env, tmp_path, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "litgpt: error: could not download roneneldan/TinyStories (no network?): no network connection to the Hugging "
        f"Face hub at {UNREACHABLE} (ConnectError: [Errno 111] Connection refused) and it is not in the datasets "
        f"cache; {HINT}"
    )
    assert attempts == [repr(("127.0.0.1", 9))]  # the probe alone: the command failed at once, without retries
