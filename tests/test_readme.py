"""The README as a user meets it: every ```python block runs as written, every repository path it names is in a
clone, and the quick start trains an MLA model.

Each python block runs in its own interpreter with the working directory set to a scratch directory, so relative
paths such as `out/pretrain/debug/final` resolve there. A block that calls `LLM.load("DIR")` gets a tiny random
checkpoint (debug-mla weights and a small BPE tokenizer) written to DIR first, so no block has to train.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LOAD_CALL = re.compile(r"""LLM\.load\(\s*["']([^"']+)["']""")
PYTHON_MODULE = re.compile(r"python3?\s+-m\s+(litgpt(?:\.\w+)*)")
CONFIG_ARG = re.compile(r"--config\s+(\S+\.yaml)")
BLOCK_TIMEOUT_S = 120


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, line number of the opening fence) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def python_blocks(text: str) -> list[tuple[str, int]]:
    return [(body, line) for lang, body, line in fenced_blocks(text) if lang in ("python", "py")]


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


BLOCKS = python_blocks(readme_text())
SERVER_URL = "http://127.0.0.1:8000"  # the Serve section's blocks talk to a server; test_serve_section_runs_as_written
STANDALONE_BLOCKS = [(body, line) for body, line in BLOCKS if SERVER_URL not in body]


# ----------------------------------------------------------------------------------------------- python snippets
def make_checkpoint(checkpoint_dir: Path) -> None:
    """A loadable checkpoint directory in seconds: random debug-mla weights and a 300-token BPE tokenizer."""
    from litgpt.checkpoint import save_checkpoint
    from litgpt.config import Config
    from litgpt.model import GPT, init_weights
    from litgpt.scripts.train_tokenizer import train_tokenizer
    from test_tokenizer import ListTexts, make_corpus

    train_tokenizer(ListTexts(texts=make_corpus()), checkpoint_dir, vocab_size=300, min_frequency=1)
    model = GPT(Config.from_name("debug-mla", vocab_size=300))
    init_weights(model)
    save_checkpoint(model, checkpoint_dir)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The scratch directory the blocks run in, with a checkpoint at every directory a block `LLM.load`s."""
    root = tmp_path_factory.mktemp("readme")
    for directory in sorted({d for body, _ in STANDALONE_BLOCKS for d in LOAD_CALL.findall(body)}):
        make_checkpoint(root / directory)
    return root


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block; the parser in this test no longer matches its fences"


@pytest.mark.parametrize("body, line", STANDALONE_BLOCKS, ids=[f"line{line}" for _, line in STANDALONE_BLOCKS])
def test_readme_python_block_runs(body, line, workdir):
    script = workdir / f"readme_block_line{line}.py"
    script.write_text(body, encoding="utf-8")
    # this checkout's litgpt first, and no empty entry (which would put the scratch directory on the path)
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(pythonpath))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert result.returncode == 0, (
        f"the ```python block at README.md line {line} fails as written (exit {result.returncode}):\n"
        f"{body}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


# ----------------------------------------------------------------------------------------------- repository paths
def repo_files() -> set[str] | None:
    """Files a clone has (tracked, plus new files git does not ignore), or None without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {f for f in out.split("\0") if f and (ROOT / f).exists()}


def repo_entries() -> set[str]:
    """Every file and folder (as relative posix paths, folders without a trailing slash) of a clone."""
    files = repo_files()
    if files is None:  # no git (an sdist, a copy): what is on disk, less what is plainly not part of the repo
        top_skip = {".git", ".venv", "venv", "out", "data", "checkpoints", "build", "dist"}  # as .gitignore has them
        files = set()
        for p in ROOT.rglob("*"):
            parts = p.relative_to(ROOT).parts
            if p.is_file() and parts[0] not in top_skip and not any(
                part in ("__pycache__", ".pytest_cache") or part.endswith(".egg-info") for part in parts
            ):
                files.add("/".join(parts))
    entries = set(files)
    for f in files:
        entries.update(str(parent) for parent in PurePosixPath(f).parents if str(parent) != ".")
    return entries


def expand_braces(token: str) -> list[str]:
    """`litgpt/{model,attention}.py` -> both paths (one level of braces, as a shell does)."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if m is None:
        return [token]
    return [x for alt in m.group(1).split(",") for x in expand_braces(token[: m.start()] + alt + token[m.end():])]


def names_repo_path(token: str, top_dirs: set[str], root_files: set[str]) -> bool:
    """Whether a word from the README names a repository path: under a folder of the repo's root, a root file, or
    a relative path that leaves the repo (../), which a clone never has."""
    if token.startswith("../"):
        return True
    first = token.split("/", 1)[0]
    return ("/" in token and first in top_dirs) or token in root_files


def named_paths(text: str, top_dirs: set[str], root_files: set[str]) -> list[tuple[str, str]]:
    """(path, where) for every markdown link target and every repo path in inline code or a code block."""
    found: list[tuple[str, str]] = []
    prose = FENCE.sub("", text)
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL or an anchor in this file
        found.append((target.split("#", 1)[0], f"link ({target})"))
    words = [(span, "inline code") for span in INLINE_CODE.findall(prose)]
    words += [(body, f"code block at line {line}") for _, body, line in fenced_blocks(text)]
    for chunk, where in words:
        for word in re.split(r"[\s\"'()\[\],;=<>|&]+", chunk):
            word = word.rstrip(".:")
            if not word or word.startswith(("-", "$", "~", "http")):
                continue
            for path in expand_braces(word):
                if names_repo_path(path, top_dirs, root_files):
                    found.append((path, f"{where}: `{word}`"))
    for module in PYTHON_MODULE.findall(text):
        stem = module.replace(".", "/")
        found.append((f"{stem}.py|{stem}/__init__.py", f"python -m {module}"))
    return found


def path_exists(path: str, entries: set[str]) -> bool:
    if "|" in path:  # alternatives (a module is a .py file or a package)
        return any(path_exists(p, entries) for p in path.split("|"))
    normal = os.path.normpath(path).replace(os.sep, "/")
    if normal.startswith("..") or os.path.isabs(normal):
        return False  # outside the repository: a clone does not have it
    normal = normal.rstrip("/")
    if any(c in normal for c in "*?["):
        return any(fnmatch.fnmatchcase(e, normal) for e in entries)
    return normal in entries or normal == "."


def test_readme_paths_exist():
    entries = repo_entries()
    top_dirs = {e.split("/", 1)[0] for e in entries if "/" in e}
    root_files = {e for e in entries if "/" not in e and e not in top_dirs}
    paths = named_paths(readme_text(), top_dirs, root_files)
    assert len(paths) >= 5, f"found only {paths}; the README parser in this test no longer matches the README"
    missing = sorted({f"{path}  ({where})" for path, where in paths if not path_exists(path, entries)})
    assert not missing, (
        "README.md names paths a clone of the repository does not have (outside the repo, moved, or not committed):\n  "
        + "\n  ".join(missing)
    )


def test_readme_layout_modules_exist():
    """The Layout section's short names (`model.py`, `generate/`, `chat.py`...) are files or folders of litgpt/."""
    text = readme_text()
    assert "## Layout" in text, "README.md has no '## Layout' section"
    layout = FENCE.sub("", text.split("## Layout", 1)[1].split("\n## ", 1)[0])
    names = {w for span in INLINE_CODE.findall(layout) for w in re.findall(r"^[\w-]+(?:\.py|/)$", span.strip())}
    assert names, "found no module names in the Layout section; the parser in this test no longer matches it"
    basenames = {e.rsplit("/", 1)[-1] for e in repo_entries() if e.startswith("litgpt/")}
    missing = sorted(n for n in names if n.rstrip("/") not in basenames)
    assert not missing, f"README.md's Layout names modules litgpt/ does not have: {missing}"


# ----------------------------------------------------------------------------------------------- quick start
def test_quick_start_trains_an_mla_model():
    """The quick start's pretrain config trains an MLA model and resumes on a rerun, and its text says both."""
    from litgpt.config import Config

    text = readme_text()
    assert "## Quick start" in text, "README.md has no '## Quick start' section"
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [m for m in FENCE.finditer(section) if CONFIG_ARG.search(m.group(2))]
    assert blocks, "the quick start runs no `litgpt pretrain --config ...`"
    quick_start = section[: blocks[0].end()]  # its words up to and including the pretrain command
    assert "MLA" in quick_start, "the quick start does not say that it trains an MLA model"
    assert re.search(r"\bre-?run", quick_start, re.I) and "resume" in quick_start, (
        "the quick start does not say that rerunning it resumes"
    )
    for path in CONFIG_ARG.findall(blocks[0].group(2)):
        cfg = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
        config = Config.from_name(cfg["model_name"], **(cfg.get("model_config") or {}))
        assert config.latent_attention is not None, f"{path} trains {config.name}, not an MLA model"
        assert cfg.get("resume") == "auto", f"{path} does not resume on a rerun (resume: {cfg.get('resume')!r})"


# ----------------------------------------------------------------------------------------------- the CPU walk-through
# The quick start, `chat`, the LoRA fine-tune and the MHA -> MLA conversion run as the README writes them (each
# `litgpt ...` command parsed from its ```bash block, in a scratch directory, repository files such as
# config_hub/pretrain/debug.yaml and README.md read from this checkout), and their outputs are checked against what the
# README says they print. Reduced to fit CI (2 CPU cores, the whole suite in 20 minutes): each pretrain runs 40 of its
# 200 steps on 1 MB of its 4 MB of text (REDUCED_PRETRAIN), and the LoRA run 5 of its 40 epochs (REDUCED_LORA).
# The converted model's full fine-tune runs as written and learns its answer from that reduced base too, so its
# output is checked word for word; the LoRA answer needs the full base and epochs, so the reduced run checks how it is
# printed, and LITGPT_README_FULL=1 runs everything unreduced and checks the answer word for word too (about 4
# minutes on two idle cores).
FULL = os.environ.get("LITGPT_README_FULL") == "1"
REDUCED_PRETRAIN = [] if FULL else ["--train.max_steps", "40", "--data.max_bytes", "1000000", "--eval.max_iters", "2"]
REDUCED_LORA = [] if FULL else ["--train.epochs", "5"]
REPO_ARGS = re.compile(r"^(config_hub/\S+|README\.md)$")  # arguments that name a file of this checkout
COMMAND_TIMEOUT_S = 900
LEN_PROMPT = "What does the Python builtin len do?"


def section(title: str) -> str:
    """The text of the README section whose `## ` heading starts with `title`, up to the next `## `."""
    text = readme_text()
    assert f"\n## {title}" in text, f"README.md has no '## {title}' section"
    return text.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def litgpt_commands(text: str) -> list[list[str]]:
    """Every `litgpt ...` command of the text's ```bash blocks (also those after `&&` or a `|`), as argument lists
    without the `litgpt` and without comments."""
    commands = []
    for lang, body, _ in fenced_blocks(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        for line in body.splitlines():
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part, comments=True)
                if words[:1] == ["litgpt"]:
                    commands.append(words[1:])
    return commands


def command(text: str, subcommand: str, contains: str = "") -> list[str]:
    """The text's one `litgpt SUBCOMMAND ...` command (written once or more) that has `contains` in it."""
    found = {tuple(c) for c in litgpt_commands(text) if c[:1] == [subcommand] and contains in " ".join(c)}
    assert len(found) == 1, f"expected one `litgpt {subcommand} ...{contains}...` command, found {sorted(found)}"
    return list(found.pop())


def text_blocks(text: str) -> list[str]:
    return [body for lang, body, _ in fenced_blocks(text) if lang == "text"]


def run_litgpt(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    args = [str(ROOT / a) if REPO_ARGS.match(a) else a for a in args]
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    result = subprocess.run([sys.executable, "-m", "litgpt", *args], cwd=cwd, env=env, input=stdin,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, f"`litgpt {shlex.join(args)}` failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Path:
    """A scratch directory after the quick start's pretrain and the fine-tuning section's data/builtins.json."""
    root = tmp_path_factory.mktemp("walkthrough")
    run_litgpt(command(section("Quick start"), "pretrain", "debug.yaml") + REDUCED_PRETRAIN, root)
    (data_block,) = [b for b, _ in BLOCKS if "data/builtins.json" in b]
    subprocess.run([sys.executable, "-c", data_block], cwd=root, check=True, timeout=120)
    return root


def test_quick_start_generate_prints_the_prompt_and_its_continuation(walkthrough):
    out = run_litgpt(command(section("Quick start"), "generate", "out/pretrain/debug/final"), walkthrough).stdout
    assert out.startswith("def main(") and len(out) > len("def main(") + 20, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_serve_section_runs_as_written(walkthrough):
    """The Serve section as a user runs it, in one shell: its bash block starts `litgpt serve` on the quick start's
    checkpoint in the background, waits for /health and queries it with curl; then its python block queries it with
    the openai client; then `kill %1` stops it (SIGTERM), and the server exits cleanly. Port 8000 as written, unless
    something on this machine holds it (then another port, in both blocks alike)."""
    text = section("Serve")
    (shell,) = [body for lang, body, _ in fenced_blocks(text) if lang == "bash" and "litgpt serve" in body]
    (client,) = [body for lang, body, _ in fenced_blocks(text) if lang == "python" and SERVER_URL in body]
    if not port_is_free(8000):
        port = free_port()
        shell = shell.replace(SERVER_URL, f"http://127.0.0.1:{port}").replace(
            "litgpt serve out/pretrain/debug/final &", f"litgpt serve out/pretrain/debug/final --port {port} &")
        client = client.replace(SERVER_URL, f"http://127.0.0.1:{port}")
    (walkthrough / "serve_client.py").write_text(client, encoding="utf-8")
    script = f"set -e\n{shell}\necho\necho '--- client ---'\n{shlex.quote(sys.executable)} serve_client.py\nkill %1\nwait %1 || echo \"server exit $?\"\n"
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    result = subprocess.run(["bash", "-c", script], cwd=walkthrough, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"the Serve section fails as written:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    served, client_out = result.stdout.split("--- client ---\n")
    completion, end = json.JSONDecoder().raw_decode(served)  # curl prints the JSON without a newline after it
    assert completion["object"] == "text_completion" and completion["model"] == "out/pretrain/debug/final"
    assert completion["usage"]["completion_tokens"] == 30, completion  # max_tokens 30 (temperature 0, no EOS cut)
    events = [line[len("data: "):] for line in served[end:].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    # the openai client's greedy completion is the curl one, word for word
    assert client_out.startswith(completion["choices"][0]["text"] + "\n"), (client_out, completion)
    assert "completion_tokens=30" in client_out
    # SIGTERM: uvicorn finishes, then re-raises the signal, so the shell sees 128 + 15
    assert client_out.rstrip().endswith("server exit 143") and "Application shutdown complete." in result.stderr


def test_chat_keeps_three_turns_in_the_quick_start_models_context(walkthrough):
    """The README's three messages piped into `litgpt chat`, at its default --max_new_tokens: three replies, each
    turn's context longer than the last, and no turn starts the conversation over (a fixed default of 200 tokens did
    at the second turn of this 256-token model)."""
    text = section("Generate and chat")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("printf ") and "| litgpt chat" in ln]
    messages = shlex.split(line.split("|", 1)[0])[1].encode().decode("unicode_escape")
    result = run_litgpt(command(text, "chat", "out/pretrain/debug/final"), walkthrough, stdin=messages)
    assert messages.count("\n") == 3 and result.stdout.count(">> Reply: ") == 3, result.stdout
    assert "context full" not in result.stderr, result.stderr
    in_context = [int(n) for n in re.findall(r"(\d+) in context\]", result.stderr)]
    assert len(in_context) == 3 and in_context[0] < in_context[1] < in_context[2] <= 256, result.stderr


def test_lora_fine_tune_answers_after_its_prompt_style(walkthrough):
    """The LoRA fine-tune as written (fewer epochs unless LITGPT_README_FULL=1), then `generate`: the plain style it
    trained with is saved and frames the printed prompt, so the answer starts on the line after the prompt instead of
    being glued to it; the full run's answer is the README's word for word."""
    text = section("Fine-tuning")
    run_litgpt(command(text, "finetune_lora") + REDUCED_LORA, walkthrough)
    checkpoint = walkthrough / "out" / "finetune" / "lora" / "final"
    assert yaml.safe_load((checkpoint / "prompt_style.yaml").read_text()) == {"name": "plain"}
    generate = command(text, "generate")
    assert generate[1] == "out/finetune/lora/final" and LEN_PROMPT in generate
    out = run_litgpt(generate, walkthrough).stdout
    assert out.startswith(LEN_PROMPT + "\n") and out[len(LEN_PROMPT) + 1:].strip(), out
    (expected,) = text_blocks(text)
    assert expected.startswith(LEN_PROMPT + "\n")
    if FULL:
        assert out == expected


def test_converted_mla_model_fine_tunes_to_the_readmes_answer(walkthrough):
    """The conversion section as written (its MHA pretrain reduced like the quick start's): the converted MLA model
    is fine-tuned and `generate` prints exactly what the README shows, not the prompt and blank lines."""
    text = section("Converting MHA/GQA checkpoints to MLA")
    run_litgpt(command(text, "pretrain") + REDUCED_PRETRAIN, walkthrough)
    report = run_litgpt(command(text, "convert_to_mla"), walkthrough).stdout
    assert "total KV bytes per token: 4096 -> 1152" in report, report
    run_litgpt(command(text, "finetune_full"), walkthrough)
    out = run_litgpt(command(text, "generate"), walkthrough).stdout
    (expected,) = text_blocks(text)
    assert out == expected == f"{LEN_PROMPT}\nReturn the number of items in a container.\n"


# ----------------------------------------------------------------------------------------------- real checkpoints
def python_module_command(text: str, module: str) -> list[str]:
    """The arguments of the text's one `python -m MODULE ...` command (in its ```bash blocks)."""
    found = [shlex.split(line, comments=True)[3:] for lang, body, _ in fenced_blocks(text)
             if lang in ("bash", "sh", "shell") for line in body.splitlines()
             if shlex.split(line, comments=True)[:3] in (["python", "-m", module], ["python3", "-m", module])]
    assert len(found) == 1, f"expected one `python -m {module} ...` command, found {found}"
    return found[0]


def test_real_checkpoints_run_offline_as_written(tmp_path, monkeypatch):
    """The section's commands as written, in order, with the hub switched off: a tiny random Llama 3 directory,
    `download --source_dir`, `chat` with the checkpoint's template (its context is apply_chat_template's ids and the
    reply), the LoRA fine-tune on the template-framed records (the validation loss falls), the conversion to MLA
    (the KV bytes the README states) and `generate` (the prompt framed as the README shows)."""
    import json

    from transformers import AutoTokenizer

    text = section("Real checkpoints")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: any hub request would fail
    (data_block,) = [b for b, _ in BLOCKS if "data/builtins.json" in b]
    subprocess.run([sys.executable, "-c", data_block], cwd=tmp_path, check=True, timeout=120, capture_output=True)

    make = python_module_command(text, "litgpt.scripts.make_tiny_hf_model")
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    subprocess.run([sys.executable, "-m", "litgpt.scripts.make_tiny_hf_model", *make], cwd=tmp_path, check=True,
                   timeout=COMMAND_TIMEOUT_S, capture_output=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath)))
    hf_dir = tmp_path / make[make.index("--out_dir") + 1]
    assert json.loads((hf_dir / "config.json").read_text())["rope_parameters"]["rope_type"] == "llama3"
    assert "chat_template" in json.loads((hf_dir / "tokenizer_config.json").read_text())

    download = command(text, "download")
    repo_id = download[1]
    out = run_litgpt(download, tmp_path).stdout
    assert f"converted {repo_id} to checkpoints/{repo_id}/lit_model.pth" in out, out

    (line,) = [ln for ln in text.splitlines() if ln.startswith("printf ") and "| litgpt chat" in ln]
    message = shlex.split(line.split("|", 1)[0])[1].encode().decode("unicode_escape")
    chat = run_litgpt(command(text, "chat"), tmp_path, stdin=message)
    assert chat.stdout.count(">> Reply: ") == 1, chat.stdout
    ((replied, in_context),) = [tuple(map(int, m)) for m in
                                re.findall(r"\[(\d+) tokens in .*?(\d+) in context\]", chat.stderr)]
    template_ids = AutoTokenizer.from_pretrained(str(hf_dir)).apply_chat_template(
        [{"role": "user", "content": message.strip()}], add_generation_prompt=True, tokenize=True)
    template_ids = list(template_ids["input_ids"] if not isinstance(template_ids, list) else template_ids)
    # the cache holds the prompt and the reply but its last token, sampled and not yet fed back
    assert in_context == len(template_ids) + replied - 1 and replied > 0, chat.stderr

    finetune = command(text, "finetune_lora")
    log = run_litgpt(finetune, tmp_path)
    val = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", log.stdout + log.stderr)]
    assert len(val) >= 2 and val[-1] < val[0] - 0.5, val
    final = tmp_path / finetune[finetune.index("--out_dir") + 1] / "final"
    assert yaml.safe_load((final / "prompt_style.yaml").read_text())["name"] == "chat_template"

    report = run_litgpt(command(text, "convert_to_mla"), tmp_path).stdout
    (kv_line,) = [ln for ln in report.splitlines() if ln.startswith("total KV bytes per token: ")]
    assert kv_line in text, f"the README does not state the conversion's {kv_line!r}"

    out = run_litgpt(command(text, "generate"), tmp_path).stdout
    (expected,) = text_blocks(text)
    assert out.startswith(expected) and len(out) > len(expected), out
