"""`litgpt download` against the real huggingface_hub: offline it fails fast in one line (one connection attempt, the
probe, and no retries); a local hub works."""

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from litgpt.scripts.download import HUB_PROBE_TIMEOUT_S, download, hub_unreachable

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
REPO = "EleutherAI/pythia-160m"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"tokenizer.json": b'{"model": {}}', "tokenizer_config.json": b'{"eos_token": "<|endoftext|>"}',
         "config.json": b"{}"}


@pytest.fixture
def online(monkeypatch):
    """No offline mode, whatever the machine's environment says."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


@pytest.fixture
def connections(monkeypatch) -> list[tuple[object, float | None]]:
    """Every TCP connection attempt of this process while the test runs (any thread): (address, the socket's timeout).
    A failed download that retried would attempt again; one that waits for nothing attempts once."""
    attempts: list[tuple[object, float | None]] = []
    connect = socket.socket.connect

    def counted(self, address):
        attempts.append((address, self.gettimeout()))
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", counted)
    return attempts


# runs `python -m litgpt ARGS` with every connection attempt written, one a line, to $CONNECTIONS_FILE at exit
COUNTED_CLI = """
import atexit, os, runpy, socket, sys
attempts = []
connect = socket.socket.connect
def counted(self, address):
    attempts.append(address)
    return connect(self, address)
socket.socket.connect = counted
def write_attempts():
    with open(os.environ["CONNECTIONS_FILE"], "w") as f:
        f.writelines(f"{a}\\n" for a in attempts)
atexit.register(write_attempts)
sys.argv = ["litgpt", *sys.argv[1:]]
runpy.run_module("litgpt", run_name="__main__", alter_sys=True)
"""


def run_counted_cli(args: list[str], env: dict[str, str], out: Path, **kwargs) -> tuple[subprocess.CompletedProcess,
                                                                                         list[str]]:
    """`litgpt ARGS` in a process of its own, and the addresses it tried to connect to (as repr strings)."""
    count_file = out / "connections.txt"
    result = subprocess.run([sys.executable, "-c", COUNTED_CLI, *args], capture_output=True, text=True,
                            env={**env, "CONNECTIONS_FILE": str(count_file)}, timeout=300, **kwargs)  # a hang guard
    assert count_file.is_file(), f"the command did not exit normally: {result.stderr}"
    return result, count_file.read_text().splitlines()


def test_unreachable_hub_fails_fast_in_one_line(online, tmp_path, connections):
    online.setenv("HF_ENDPOINT", UNREACHABLE)
    with pytest.raises(ValueError) as info:
        download(REPO, checkpoint_dir=tmp_path)
    message = str(info.value)
    # one attempt, the probe's, with its timeout: no listing, no download, none of huggingface_hub's retries
    assert connections == [(("127.0.0.1", 9), HUB_PROBE_TIMEOUT_S)]
    assert "\n" not in message
    assert message.startswith(f"could not download {REPO}: no network connection to the Hugging Face hub at "
                              f"{UNREACHABLE} (ConnectError: ")
    assert message.endswith("copy tokenizer.json and tokenizer_config.json into a directory and pass it as "
                            "--tokenizer_dir, or train one with `litgpt train_tokenizer`")
    assert not (tmp_path / "EleutherAI").exists()


def test_offline_mode_is_named(online, tmp_path, connections):
    online.setenv("HF_ENDPOINT", UNREACHABLE)
    online.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"^could not download {REPO}: offline mode is on \(HF_HUB_OFFLINE is set\); "
                       r"unset HF_HUB_OFFLINE to download, or on a machine without network access, copy tokenizer"):
        download(REPO, checkpoint_dir=tmp_path)
    assert connections == []  # offline: not even the probe


def test_silent_server_is_bounded_by_the_probe_timeout(connections):
    """A server that accepts and never answers: one request whose socket carries the probe's timeout, which is what
    ends it (a timeout error, not an answer and not a retry)."""
    with socket.socket() as server:  # accepts connections (backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        address = server.getsockname()
        problem = hub_unreachable(f"http://127.0.0.1:{address[1]}", timeout=0.5)
    assert problem is not None and "Timeout" in problem
    assert connections == [(address, 0.5)]


def test_a_probe_that_never_returns_is_abandoned_after_its_timeout(monkeypatch):
    """A request stuck where the socket timeout does not reach (a DNS lookup): the probe gives up waiting for its
    thread and names the bound; the stuck request is only released afterwards."""
    import huggingface_hub

    release, calls = threading.Event(), []

    class StuckSession:
        def head(self, url: str, timeout: float) -> None:
            calls.append((url, timeout))
            release.wait(60)  # returns normally: a probe that waited for it would report the hub reachable

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: StuckSession())
    try:
        problem = hub_unreachable("http://hub.invalid", timeout=0.2)
    finally:
        release.set()
    assert problem == "no answer within 0.2 s"
    assert calls == [("http://hub.invalid", 0.2)]


def test_cli_offline_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LITGPT_DEBUG")}
    env["HF_ENDPOINT"] = UNREACHABLE
    result, attempts = run_counted_cli(["download", REPO, "--checkpoint_dir", str(tmp_path)], env, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"litgpt: error: could not download {REPO}: no network connection to the Hugging Face "
                               f"hub at {UNREACHABLE}")
    assert attempts == [repr(("127.0.0.1", 9))]  # the probe alone: the command failed at once, without retries


# ---------------------------------------------------------------------------------------------------- a local hub
class FakeHub(BaseHTTPRequestHandler):
    """Just enough of the hub API for list_repo_files and hf_hub_download of REPO at main, serving `files`."""

    repo: str = REPO
    files: dict[str, bytes] = FILES
    requests: list[str] = []
    tokens: list[str] = []

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        path = self.path.split("?")[0]
        if path == "/":
            return self._reply(200)
        if "authorization" in self.headers:
            self.tokens.append(self.headers["authorization"])
        if path == f"/api/models/{self.repo}/tree/main":
            self.requests.append(path)
            tree = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": name}
                    for name, data in self.files.items()]
            return self._reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        prefix = f"/{self.repo}/resolve/main/"
        if path.startswith(prefix) and path[len(prefix):] in self.files:
            name = path[len(prefix):]
            if self.command == "GET":
                self.requests.append(path)
            return self._reply(200, self.files[name], {"X-Repo-Commit": COMMIT, "ETag": f'"etag-{name}"'})
        return self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound"})

    do_GET = do_HEAD = _route


@pytest.fixture
def local_hub(online):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tokenizer_only_from_a_reachable_hub(local_hub, tmp_path):
    out_dir = download(REPO, checkpoint_dir=tmp_path, tokenizer_only=True)
    assert out_dir == tmp_path / REPO
    assert (out_dir / "tokenizer.json").read_bytes() == FILES["tokenizer.json"]
    assert (out_dir / "tokenizer_config.json").read_bytes() == FILES["tokenizer_config.json"]
    assert not (out_dir / "config.json").exists()  # only tokenizer files


def test_missing_repository_is_one_line(local_hub, tmp_path):
    with pytest.raises(ValueError, match=rf"^nobody/nothing is not a model repository on {local_hub} \(or it is "
                       r"private: pass --access_token\); check the name$"):
        download("nobody/nothing", checkpoint_dir=tmp_path)
    assert not Path(tmp_path / "nobody").exists()


# ---------------------------------------------------------------------------------------------------- whole models
TINY = "tiny-org/tiny-llama"


@pytest.fixture
def hf_model_dir(tmp_path):
    """A tiny random transformers Llama saved by save_pretrained, with a tokenizer: (the model, its directory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_tokenizers import make_hf_tokenizer
    from test_convert_hf_checkpoint import randomize_

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    randomize_(model)
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    make_hf_tokenizer(hf_dir, {"eos_token": "</s>", "bos_token": "<s>"})
    return model, hf_dir


def assert_logits_equal(hf_model, checkpoint_dir: Path) -> None:
    from litgpt.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint_dir).eval()
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_model(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.fixture
def model_hub(online, hf_model_dir):
    """The tiny Llama as the hub's TINY, beside files the download must leave: a .bin copy of the weights, a README
    and a subfolder's checkpoint. Yields (the HF model, the handler class: its requests and tokens)."""
    hf_model, hf_dir = hf_model_dir
    files = {p.name: p.read_bytes() for p in hf_dir.iterdir() if p.is_file()}
    files.update({"pytorch_model.bin": b"not fetched", "README.md": b"# tiny", "original/consolidated.pth": b"x"})
    handler = type("TinyHub", (FakeHub,), {"repo": TINY, "files": files, "requests": [], "tokens": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    online.delenv("HF_TOKEN", raising=False)
    yield hf_model, handler
    server.shutdown()
    server.server_close()


def test_download_fetches_the_model_and_converts_it(model_hub, tmp_path, capsys):
    hf_model, hub = model_hub
    out_dir = download(TINY, checkpoint_dir=tmp_path / "checkpoints")
    assert out_dir == tmp_path / "checkpoints" / TINY
    fetched = sorted(path.rsplit("/", 1)[-1] for path in hub.requests if "/resolve/" in path)
    assert fetched == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                       "tokenizer_config.json"]
    assert {"lit_model.pth", "model_config.yaml", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out_dir.iterdir()}
    assert_logits_equal(hf_model, out_dir)
    from litgpt.config import Config

    assert Config.from_file(out_dir / "model_config.yaml").name == "tiny-llama"  # not a named config: the repo's name
    assert f"litgpt generate {TINY}" in capsys.readouterr().out
    assert hub.tokens == []


def test_access_token_and_model_name_and_no_conversion(model_hub, tmp_path):
    _, hub = model_hub
    out_dir = download(TINY, checkpoint_dir=tmp_path, access_token="hf_secret", convert_checkpoint=False)
    assert hub.tokens and set(hub.tokens) == {"Bearer hf_secret"}
    assert (out_dir / "model.safetensors").is_file() and not (out_dir / "lit_model.pth").exists()
    # the same files again (already there), converted and named
    out_dir = download(TINY, checkpoint_dir=tmp_path, model_name="my-llama")
    from litgpt.config import Config

    assert Config.from_file(out_dir / "model_config.yaml").name == "my-llama"


def test_hf_token_environment_variable_and_tokenizer_only(model_hub, online, tmp_path):
    _, hub = model_hub
    online.setenv("HF_TOKEN", "hf_from_env")
    download(TINY, checkpoint_dir=tmp_path, tokenizer_only=True)
    assert set(hub.tokens) == {"Bearer hf_from_env"}
    assert sorted(p.name for p in (tmp_path / TINY).iterdir() if p.is_file()) == [
        "generation_config.json", "tokenizer.json", "tokenizer_config.json"]


def test_source_dir_converts_offline(online, hf_model_dir, tmp_path, connections):
    hf_model, hf_dir = hf_model_dir
    online.setenv("HF_ENDPOINT", UNREACHABLE)
    online.setenv("HF_HUB_OFFLINE", "1")
    (hf_dir / "README.md").write_text("not taken")
    out_dir = download(TINY, checkpoint_dir=tmp_path / "checkpoints", source_dir=hf_dir)
    assert connections == []
    assert not (out_dir / "README.md").exists()
    assert_logits_equal(hf_model, out_dir)
    assert (hf_dir / "config.json").read_bytes() == (out_dir / "config.json").read_bytes()
    assert not (hf_dir / "lit_model.pth").exists()  # the source directory is left as it was


def test_llm_load_downloads_a_missing_hub_id_with_its_access_token(online, hf_model_dir, tmp_path, monkeypatch):
    """As upstream's `LLM.load("ORG/NAME", access_token=...)`: a hub id not yet in checkpoints/ORG/NAME is downloaded
    (with the token) and converted there, then loaded; once there, it loads without fetching again."""
    import litgpt.scripts.download as download_module
    from litgpt import LLM

    hf_model, hf_dir = hf_model_dir
    fetched = []

    def fetch_from_local_dir(repo_id, out_dir, tokenizer_only, token, revision):
        fetched.append((repo_id, token, tokenizer_only))
        return download_module.copy_from_dir(repo_id, hf_dir, out_dir, tokenizer_only)

    monkeypatch.setattr(download_module, "fetch_from_hub", fetch_from_local_dir)
    monkeypatch.chdir(tmp_path)
    llm = LLM.load(TINY, access_token="hf_x", device="cpu")
    assert fetched == [(TINY, "hf_x", False)]
    assert llm.checkpoint_dir == Path("checkpoints") / TINY and (tmp_path / "checkpoints" / TINY / "lit_model.pth").is_file()
    assert_logits_equal(hf_model, tmp_path / "checkpoints" / TINY)
    LLM.load(TINY, device="cpu")
    assert len(fetched) == 1


def test_cli_list_prints_named_models(capsys):
    from litgpt.__main__ import main
    from litgpt.config import Config

    main(["download", "list"])
    lines = capsys.readouterr().out.splitlines()
    assert "EleutherAI/pythia-160m  pythia-160m" in [" ".join(line.split()).replace(" ", "  ", 1) for line in lines]
    pairs = {tuple(line.split()) for line in lines[1:]}
    named = {(f"{c.hf_config['org']}/{c.hf_config['name']}", c.name)
             for c in map(Config.from_name, Config.names()) if c.hf_config and c.name == c.hf_config.get("name")}
    assert named <= pairs
    assert not any(name.endswith(("-gqa", "-mla")) for _, name in pairs)  # variants are not the hub's models


@pytest.mark.parametrize(
    "args, message",
    [
        (["not-a-repo-id"], "'not-a-repo-id' is not a hub repository id ORG/NAME (e.g. EleutherAI/pythia-160m); run "
                            "`litgpt download list` for the named models"),
        ([TINY, "--source_dir", "/nonexistent/hf"], "--source_dir '/nonexistent/hf' is not a directory"),
        ([TINY, "--dtype", "int8"], "--dtype must name a torch floating point type"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, capsys, tmp_path):
    from litgpt.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["download", *args, "--checkpoint_dir", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err


def test_source_dir_without_weights_is_one_line(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"^{TINY} has no \*.safetensors or pytorch_model\*.bin weights at its top "
                       r"level \(in --source_dir .*\); pass --tokenizer_only true"):
        download(TINY, checkpoint_dir=tmp_path / "c", source_dir=tmp_path / "hf")


def test_source_dir_with_sharded_weights_takes_the_shards_and_their_index(hf_model_dir, tmp_path):
    hf_model, _ = hf_model_dir
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    torch.save(hf_model.state_dict(), sharded / "pytorch_model.bin")  # the safetensors are preferred
    out_dir = download(TINY, checkpoint_dir=tmp_path / "checkpoints", source_dir=sharded, dtype="bfloat16")
    assert sorted(p.name for p in out_dir.glob("*.safetensors")) == shards
    assert not (out_dir / "pytorch_model.bin").exists()
    from litgpt.checkpoint import load_checkpoint

    assert load_checkpoint(out_dir).lm_head.weight.dtype == torch.bfloat16
