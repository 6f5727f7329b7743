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
    """Just enough of the hub API for list_repo_files and hf_hub_download of REPO at main."""

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
        if path == f"/api/models/{REPO}/tree/main":
            tree = [{"type": "file", "oid": "0" * 40, "size": len(data), "path": name} for name, data in FILES.items()]
            return self._reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        prefix = f"/{REPO}/resolve/main/"
        if path.startswith(prefix) and path[len(prefix):] in FILES:
            name = path[len(prefix):]
            return self._reply(200, FILES[name], {"X-Repo-Commit": COMMIT, "ETag": f'"etag-{name}"'})
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


def test_download_from_a_reachable_hub(local_hub, tmp_path):
    out_dir = download(REPO, checkpoint_dir=tmp_path)
    assert out_dir == tmp_path / REPO
    assert (out_dir / "tokenizer.json").read_bytes() == FILES["tokenizer.json"]
    assert (out_dir / "tokenizer_config.json").read_bytes() == FILES["tokenizer_config.json"]
    assert not (out_dir / "config.json").exists()  # only tokenizer files


def test_missing_repository_is_one_line(local_hub, tmp_path):
    with pytest.raises(ValueError, match=rf"^nobody/nothing is not a model repository on {local_hub} \(or it is "
                       r"private: pass --access_token\); check the name$"):
        download("nobody/nothing", checkpoint_dir=tmp_path)
    assert not Path(tmp_path / "nobody").exists()
