"""What a clone of the repository ships: no file names a path outside the repository (a sibling folder or one
machine's absolute paths), every config_hub yaml parses as its command reads it and names only repository-relative
paths, and `benchmarks/gpu.sh` lists the commands of every topic without a GPU."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from litgpt.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("README.md", "config_hub", "tests", "docs", "tutorials", "litgpt", "benchmarks")
# a sibling checkout's folder (spelled in two parts, so that a plain search of the tree for it finds no file), one
# machine's work tree, home directories
SIBLING = "../" + "shared"
OUTSIDE = re.compile(re.escape(SIBLING) + r"\b|/work/|/home/[A-Za-z0-9_.-]+|/Users/[A-Za-z0-9_.-]+|/root/")


def shipped_files(root: Path = ROOT) -> list[Path]:
    """Tracked (and new, not ignored) files of the shipped folders; without git, every file under them. Raw result
    files in benchmarks/results/ (dated logs, JSON, CSV, profiles) are data and left out; its pages are checked."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SHIPPED],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        paths = [root / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for name in SHIPPED for p in ([root / name] if (root / name).is_file() else (root / name).rglob("*"))]
    keep = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in rel:
            continue
        if rel.startswith("benchmarks/results/") and (not rel.endswith(".md") or path.name[:1].isdigit()):
            continue
        keep.append(path)
    return keep


def outside_references(paths: list[Path], root: Path = ROOT) -> list[str]:
    """'file:line: text' for every line that names a path outside the repository."""
    found = []
    for path in paths:
        data = path.read_bytes()
        if b"\0" in data:  # images, archives
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(root).as_posix()}:{number}: {line.strip()[:120]}")
    return found


def test_no_shipped_file_names_a_path_outside_the_repository():
    here = Path(__file__).resolve()
    files = [p for p in shipped_files() if p.resolve() != here]  # this file spells the patterns out
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".yaml" for p in files)
    found = outside_references(files)
    assert not found, "files that name a path outside the repository (a clone has none of them):\n" + "\n".join(found)


def test_the_check_finds_such_a_line_and_leaves_raw_results_alone(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(f"Data: `{SIBLING}/data/corpus`\nfine: data/offline_corpus\n")
    (tmp_path / "config_hub").mkdir()
    (tmp_path / "config_hub" / "a.yaml").write_text("tokenizer_dir: /work/main/checkpoints\n")
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "tutorials" / "b.md").write_text("see /home/someone/notes and /tmp/run, out/gpu\n")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "2026-12-01_run.log").write_text("checkpoint /work/main/.keep/mha\n")  # data
    (results / "decode.md").write_text("raw: /work/main/out\n")  # a page
    found = outside_references(shipped_files(tmp_path), tmp_path)
    assert sorted(f.split(":")[0] for f in found) == [
        "benchmarks/results/decode.md", "config_hub/a.yaml", "docs/guide.md", "tutorials/b.md"]
    assert "docs/guide.md:1:" in "\n".join(found)


# ------------------------------------------------------------------------------------------------------ config_hub
def command_for(path: Path) -> str:
    part = path.relative_to(ROOT / "config_hub").parts[0]
    if part == "finetune":
        return "finetune_full" if path.stem == "full" else "finetune_lora"
    return {"pretrain": "pretrain", "compare": "compare"}[part]


def path_values(node, key=""):
    """(key, value) of every string in a printed config that is a local path: the keys ending in _dir/_path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from path_values(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from path_values(v, key)
    elif isinstance(node, str) and key.endswith(("_dir", "_path")):
        yield key, node


TASKS = sorted((ROOT / "config_hub" / "evaluate").glob("*.yaml"))  # lm-eval task files, for `litgpt evaluate`
HUB = sorted(set((ROOT / "config_hub").rglob("*.yaml")) - set(TASKS))  # command configs


@pytest.mark.parametrize("path", HUB, ids=[p.relative_to(ROOT / "config_hub").as_posix() for p in HUB])
def test_config_hub_parses_and_names_only_repository_paths(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command_for(path), "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = dict(path_values(printed))
    assert paths, "a config_hub file names where it writes or reads"
    for key, value in paths.items():
        assert not Path(value).is_absolute() and ".." not in Path(value).parts, (
            f"{path.name}: {key} = {value!r} points outside the repository")


@pytest.mark.parametrize("path", TASKS, ids=[p.name for p in TASKS])
def test_evaluate_tasks_read_only_shipped_repository_files(path):
    task = yaml.safe_load(path.read_text())
    files = task["dataset_kwargs"]["data_files"]
    for value in (files.values() if isinstance(files, dict) else [files]):
        assert not Path(value).is_absolute() and ".." not in Path(value).parts, f"{path.name}: {value!r}"
        assert (ROOT / value).is_file(), f"{path.name}: {value!r} is not a shipped file"


# ------------------------------------------------------------------------------------------------------ gpu.sh
TOPICS = ("decode", "generate", "serve", "training", "finetune", "evaluate", "fp8", "moe", "moe_model", "convert",
          "kernels", "tests")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_lists_every_topic_with_existing_scripts_and_configs():
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for topic in TOPICS:
        result = subprocess.run(["bash", str(script), "--list", topic], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        commands = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
        assert commands, topic
        for line in commands:
            for ref in re.findall(r"(?:benchmarks|config_hub|tests)/[\w./-]+\.(?:py|yaml)", line):
                assert (ROOT / ref).is_file(), f"{topic}: {ref} does not exist"
        assert "nvidia-smi" not in result.stdout and "CUDA" not in result.stderr  # nothing ran
    bad = subprocess.run(["bash", str(script), "--list", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown topic" in bad.stderr
    header = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True).stdout
    assert all(f"  {topic}" in header for topic in TOPICS)
