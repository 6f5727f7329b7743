"""`litgpt benchmark generate`: time the real `litgpt generate` and `litgpt chat` commands, and peers, on a checkpoint.

Every measurement is a separate process, started the way a user starts it, so start-up (imports), loading and the
first token are counted as a user sees them:

- ours: `python -m litgpt generate CKPT --prompt P --max_new_tokens N --temperature T` (plus `--num_samples B
  --batch_size B` for a batch of B), for every N in `new_tokens` and B in `batches`. The parent times the process from
  start to exit (wall) and the first byte printed after the echoed prompt (first printed token; the first sample's text
  streams, at any batch). The command's own stderr stats line gives start-up, load, first
  token, decode tokens and seconds, decode tokens/s and peak memory; the older line (`time to first token ...;
  N tokens in S s: decode R tokens/s ...`) is read too.
- chat: `python -m litgpt chat CKPT --max_new_tokens C --temperature 0`, two messages typed after each `>> Prompt: `
  then an empty line; one row per turn from the command's `[N tokens in S s, K in context]` line (the target: the
  second turn answers in at most 0.5 s), with the parent's send-to-first-byte and send-to-next-prompt times.
- upstream (`peer_python`): `PEER -m litgpt generate CKPT --prompt P --max_new_tokens N --temperature T` from
  another venv (litgpt 0.5.13), run in a temporary directory without PYTHONPATH; its stderr lines `Time to
  instantiate model`, `Time to load the model weights`, `Time for inference i: S sec total, R tokens/sec` and `Memory
  used: G GB` are read. Its tokens/sec counts every new token over the whole generation (prefill included) and it
  has no batched generation, so batches above 1 are recorded as skipped.
- transformers (`hf`): the checkpoint converted by `litgpt.scripts.convert_lit_checkpoint` into out_dir/hf, then
  `AutoModelForCausalLM.generate` (bf16 on CUDA, float32 on CPU) with min_new_tokens = max_new_tokens, timed in a
  subprocess with CUDA synchronisation; skipped, with the converter's reason, where the architecture has no HF
  layout.

Warm-up (on by default): each of our commands (every `litgpt generate` configuration and the chat) first runs once
untimed, so the one-time on-disk caches (Triton kernels, inductor compiles, autotuning) are filled as they are for
a user's second run; without it the first timed run pays them (on an H200, a cold first `litgpt generate` of
pythia-160m decoded at 8 tokens/s, the next ones at 660-870).

Temperature: by default batch 1 is greedy (temperature 0) and larger batches are sampled at temperature 0.8 with
top_k 50 (the `litgpt generate` defaults), so the batch-8 rows measure sampled decoding; `--temperature T` uses T
for all.
results.json (rows + meta) and results.md (the table) are rewritten after every row.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from litgpt.utils import atomic_write

__all__ = [
    "Timed", "benchmark_generate", "format_table", "parse_chat_turns", "parse_generate_stats", "parse_upstream_stats",
    "run_timed",
]

DEFAULT_PROMPT = "What food do llamas eat?"
SECOND_MESSAGE = "And what else do they like?"
SAMPLED_TEMPERATURE = 0.8  # batches above 1, when --temperature is not given (litgpt generate's default)
SAMPLED_TOP_K = 50  # litgpt generate's and upstream's default top_k; transformers is given the same
PROCESS_TIMEOUT_S = 3600.0
CHAT_TARGET_S = 0.5  # the second chat turn's reply should take at most this long (a reply that feels immediate)
PROMPT_MARKER, REPLY_MARKER = b">> Prompt: ", b">> Reply: "
HF_RESULT = "BENCHMARK_HF "
TOOL_OURS, TOOL_CHAT = "litgpt generate", "litgpt chat"
TOOL_UPSTREAM, TOOL_HF = "upstream litgpt generate", "HF generate"

_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)"  # 2,846.2 / 0.412 / 999


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _seconds(value: str, unit: str) -> float:
    return _num(value) / 1000 if unit == "ms" else _num(value)


# ---------------------------------------------------------------------------------------------------- parsers
_FIELDS = {  # the current `litgpt generate:` line, field by field (a field added later does not break the rest)
    "start_up_s": re.compile(rf"start-up {_NUM} (ms|s)\b"),
    "load_s": re.compile(rf"\bload {_NUM} (ms|s)\b"),
    "prepare_s": re.compile(rf"\bprepare {_NUM} (ms|s)\b"),
    "first_token_s": re.compile(rf"first token {_NUM} (ms|s)\b"),
}
_DECODE = re.compile(rf"decode {_NUM} tokens in {_NUM} (ms|s) \({_NUM} tokens/s(?:, batch (\d+))?\)")
_PEAK = re.compile(rf"peak memory {_NUM} GB(?: \(([^)]*)\))?")
_KV = re.compile(rf"KV cache {_NUM} MB")
_OLDER = re.compile(rf"time to first token {_NUM} (ms|s); {_NUM} tokens in {_NUM} s: decode {_NUM} tokens/s"
                    rf" \(batch (\d+)\)")


def _parse_current(line: str) -> Optional[dict]:
    decode = _DECODE.search(line)
    if decode is None:
        return None
    stats: dict[str, Any] = {"format": "current"}
    for name, pattern in _FIELDS.items():
        m = pattern.search(line)
        stats[name] = _seconds(m.group(1), m.group(2)) if m else None
    stats.update(decode_tokens=int(_num(decode.group(1))), decode_s=_seconds(decode.group(2), decode.group(3)),
                 decode_tokens_per_s=_num(decode.group(4)), batch=int(decode.group(5)) if decode.group(5) else None)
    return stats


def _parse_older(line: str) -> Optional[dict]:
    m = _OLDER.search(line)
    if m is None:
        return None
    first, tokens, total = _seconds(m.group(1), m.group(2)), int(_num(m.group(3))), _num(m.group(4))
    batch = int(m.group(6))
    # decode excludes each row's first token (the prefill's): batch * (steps - 1) when no row stops early
    return {"format": "older", "start_up_s": None, "load_s": None, "prepare_s": None, "first_token_s": first, "new_tokens": tokens,
            "decode_tokens": max(tokens - batch, 0), "decode_s": max(total - first, 0.0),
            "decode_tokens_per_s": _num(m.group(5)), "batch": batch}


def parse_generate_stats(stderr: str) -> Optional[dict]:
    """The stats of `litgpt generate`'s stderr lines (current `litgpt generate: start-up ...` or older `time to first
    token ...` format), aggregated over its lines (one per batch of samples); None if there is none.

    Keys: format, start_up_s, load_s, prepare_s (None in the older format), first_token_s (of the first line), decode_tokens, decode_s (summed),
    decode_tokens_per_s (the line's, or summed tokens over summed seconds for several), batch, peak_memory_gb (max),
    peak_memory_kind, kv_cache_mb, stats_lines.
    """
    found = []
    for line in stderr.splitlines():
        stats = _parse_current(line) if "litgpt generate:" in line else None
        stats = stats or _parse_older(line)
        if stats is None:
            continue
        peak, kv = _PEAK.search(line), _KV.search(line)
        stats.update(peak_memory_gb=_num(peak.group(1)) if peak else None,
                     peak_memory_kind=peak.group(2) if peak else None, kv_cache_mb=_num(kv.group(1)) if kv else None)
        found.append(stats)
    if not found:
        return None
    out = dict(found[0], stats_lines=len(found))
    if len(found) > 1:
        tokens, seconds = sum(s["decode_tokens"] for s in found), sum(s["decode_s"] for s in found)
        peaks = [s["peak_memory_gb"] for s in found if s["peak_memory_gb"] is not None]
        out.update(decode_tokens=tokens, decode_s=seconds, peak_memory_gb=max(peaks) if peaks else None,
                   decode_tokens_per_s=tokens / seconds if seconds > 0 else found[-1]["decode_tokens_per_s"],
                   batch=max(s["batch"] or 0 for s in found) or None)
        if "new_tokens" in out:
            out["new_tokens"] = sum(s["new_tokens"] for s in found)
    return out


_TURN = re.compile(r"^\[(\d+) tokens in " + _NUM + r" (ms|s)(.*)\]\s*$")
_TURN_CONTEXT = re.compile(r"(\d+) in context")
_TURN_FIRST = re.compile(rf"first token {_NUM} (ms|s)")
_TURN_RATE = re.compile(rf"{_NUM} tokens/s")


def parse_chat_turns(stderr: str) -> list[dict]:
    """`litgpt chat`'s per-turn stderr lines `[N tokens in S s, K in context]`, in order: tokens, seconds and, where
    the line has them, context, first_token_s and tokens_per_s (None where not)."""
    turns = []
    for line in stderr.splitlines():
        m = _TURN.match(line.strip())
        if m is None:
            continue
        rest = m.group(4)
        context, first, rate = _TURN_CONTEXT.search(rest), _TURN_FIRST.search(rest), _TURN_RATE.search(rest)
        turns.append({
            "tokens": int(m.group(1)), "seconds": _seconds(m.group(2), m.group(3)),
            "context": int(context.group(1)) if context else None,
            "first_token_s": _seconds(first.group(1), first.group(2)) if first else None,
            "tokens_per_s": _num(rate.group(1)) if rate else None,
        })
    return turns


_UP_INFERENCE = re.compile(rf"Time for inference \d+: {_NUM} sec total, {_NUM} tokens/sec")
_UP_MEMORY = re.compile(rf"Memory used: {_NUM} GB")
_UP_INSTANTIATE = re.compile(rf"Time to instantiate model: {_NUM} seconds")
_UP_LOAD = re.compile(rf"Time to load the model weights: {_NUM} seconds")


def parse_upstream_stats(stderr: str) -> Optional[dict]:
    """Upstream litgpt's `generate` stderr (`Time for inference 1: 4.12 sec total, 24.27 tokens/sec`, `Memory used:
    0.35 GB`, the instantiate/load times); None without an inference line.

    Keys: generate_s (summed over samples), tokens_per_s (all new tokens over all generate seconds), new_tokens
    (estimated as tokens/sec x seconds), samples, load_s (instantiate + load weights), peak_memory_gb.
    """
    runs = [(_num(a), _num(b)) for a, b in _UP_INFERENCE.findall(stderr)]
    if not runs:
        return None
    seconds = sum(s for s, _ in runs)
    tokens = sum(s * rate for s, rate in runs)
    loads = [_num(v) for v in _UP_INSTANTIATE.findall(stderr) + _UP_LOAD.findall(stderr)]
    memory = _UP_MEMORY.findall(stderr)
    return {"generate_s": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else runs[-1][1],
            "new_tokens": round(tokens), "samples": len(runs), "load_s": sum(loads) if loads else None,
            "peak_memory_gb": _num(memory[-1]) if memory else None}


# ---------------------------------------------------------------------------------------------------- processes
@dataclass
class Timed:
    """A finished subprocess: its exit status, wall seconds, stdout bytes with their arrival times, stderr text."""

    command: list[str]
    returncode: Optional[int]
    wall_s: float
    stdout: bytes
    stderr: str
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, stdout bytes so far)
    sent: list[float] = field(default_factory=list)  # seconds since start at which each stdin line was written
    timed_out: bool = False

    def time_at(self, offset: int) -> Optional[float]:
        """Seconds from the start until stdout byte `offset` arrived (None: it never did)."""
        i = bisect.bisect_right([end for _, end in self.chunks], offset)
        return self.chunks[i][0] if i < len(self.chunks) else None

    def error(self) -> Optional[str]:
        """None if it exited with 0, else one line: the last line of stderr (or the exit status / timeout)."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        if self.returncode == 0:
            return None
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


def run_timed(command: list[str], env: Optional[dict] = None, cwd: Optional[Path] = None,
              lines: Optional[list[str]] = None, wait_for: bytes = PROMPT_MARKER,
              timeout: float = PROCESS_TIMEOUT_S) -> Timed:
    """Run `command`, timing it from start to exit and timestamping every stdout chunk as it arrives.

    With `lines`, line i is written to stdin once `wait_for` has appeared i + 1 times on stdout (as a user types
    after each prompt); stdin is closed after the last one. Without, stdin is empty.
    """
    buf, chunks, sent, eof = bytearray(), [], [], [False]
    cond = threading.Condition()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE if lines is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)

    def read_stdout() -> None:
        fd = proc.stdout.fileno()
        while True:
            data = os.read(fd, 1 << 16)
            now = time.perf_counter() - t0
            with cond:
                if not data:
                    eof[0] = True
                    cond.notify_all()
                    return
                buf.extend(data)
                chunks.append((now, len(buf)))
                cond.notify_all()

    err: list[bytes] = []
    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    deadline = t0 + timeout
    if lines is not None:
        for i, line in enumerate(lines):
            with cond:
                ready = cond.wait_for(lambda: eof[0] or buf.count(wait_for) > i, max(deadline - time.perf_counter(), 0))
                if not ready or eof[0]:
                    break
            sent.append(time.perf_counter() - t0)
            try:
                proc.stdin.write((line + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                break
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    timed_out = False
    try:
        proc.wait(timeout=max(deadline - time.perf_counter(), 0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    wall = time.perf_counter() - t0
    for reader in readers:
        reader.join(timeout=10)
    stderr = (err[0] if err else b"").decode("utf-8", errors="replace")
    return Timed(command, proc.returncode, wall, bytes(buf), stderr, list(chunks), sent, timed_out)


def _text_offset(stdout: bytes, prompt: str, at_line_start: bool = False) -> Optional[int]:
    """The stdout offset right after the echoed prompt (the first occurrence; at a line start if asked)."""
    needle = prompt.encode()
    if not at_line_start:
        i = stdout.find(needle)
        return i + len(needle) if i >= 0 else None
    if stdout.startswith(needle):
        return len(needle)
    i = stdout.find(b"\n" + needle)
    return i + 1 + len(needle) if i >= 0 else None


# ---------------------------------------------------------------------------------------------------- rows
ROW_KEYS = ("tool", "model", "new_tokens", "batch", "temperature", "repeat", "wall_s", "start_up_s", "load_s",
            "prepare_s", "first_printed_token_s", "first_token_s", "decode_tokens", "decode_s", "decode_tokens_per_s",
            "peak_memory_gb", "skipped", "error", "note", "command")


def _row(**values: Any) -> dict:
    row = {key: None for key in ROW_KEYS}
    row.update(values)
    return row


def _ours_row(timed: Timed, prompt: str, **base: Any) -> dict:
    row = _row(**base, command=shlex.join(timed.command), wall_s=timed.wall_s, error=timed.error())
    offset = _text_offset(timed.stdout, prompt)
    row["first_printed_token_s"] = timed.time_at(len(prompt.encode()) if offset is None else offset)
    stats = parse_generate_stats(timed.stderr)
    if stats is None:
        row["error"] = row["error"] or "no stats line on stderr"
        return row
    for key in ("start_up_s", "load_s", "prepare_s", "first_token_s", "decode_tokens", "decode_s",
                "decode_tokens_per_s", "peak_memory_gb"):
        row[key] = stats.get(key)  # an older line has no prepare phase
    row.update(stats_format=stats["format"], peak_memory_kind=stats["peak_memory_kind"],
               kv_cache_mb=stats["kv_cache_mb"])
    return row


def _chat_rows(timed: Timed, n_messages: int, **base: Any) -> list[dict]:
    turns = parse_chat_turns(timed.stderr)
    command = shlex.join(timed.command)
    error = timed.error()
    if len(turns) < n_messages:
        lines = [line for line in timed.stderr.splitlines() if "error" in line.lower()]
        error = error or (lines[-1].strip() if lines else f"{len(turns)} of {n_messages} turn lines on stderr")
    replies = [m.end() for m in re.finditer(re.escape(REPLY_MARKER), timed.stdout)]
    prompts = [m.start() for m in re.finditer(re.escape(PROMPT_MARKER), timed.stdout)]
    rows = []
    for i in range(n_messages):
        turn = turns[i] if i < len(turns) else None
        row = _row(**base, tool=f"{TOOL_CHAT} (turn {i + 1})", command=command,
                   error=None if turn else error, turn=i + 1, process_wall_s=timed.wall_s)
        if turn is not None:
            sent = timed.sent[i] if i < len(timed.sent) else None
            first = timed.time_at(replies[i]) if i < len(replies) else None
            end = timed.time_at(prompts[i + 1]) if i + 1 < len(prompts) else None
            row.update(new_tokens=turn["tokens"], turn_s=turn["seconds"], context=turn["context"],
                       first_token_s=turn["first_token_s"],
                       decode_tokens_per_s=turn["tokens_per_s"] or (turn["tokens"] / turn["seconds"]
                                                                    if turn["seconds"] > 0 else None),
                       first_printed_token_s=first - sent if first is not None and sent is not None else None,
                       wall_s=end - sent if end is not None and sent is not None else None)
            row["note"] = f"turn {turn['seconds']:.3f} s (own)"
            if i == 1:
                ok = "meets" if turn["seconds"] <= CHAT_TARGET_S else "misses"
                row["note"] += f"; {ok} the {CHAT_TARGET_S} s target"
        rows.append(row)
    return rows


def _upstream_row(timed: Timed, prompt: str, **base: Any) -> dict:
    row = _row(**base, command=shlex.join(timed.command), wall_s=timed.wall_s, error=timed.error(),
               note="tokens/s over the whole generation (prefill included); prints the text at the end")
    offset = _text_offset(timed.stdout, prompt, at_line_start=True)  # upstream pprints its arguments first
    row["first_printed_token_s"] = timed.time_at(offset) if offset is not None else None
    stats = parse_upstream_stats(timed.stderr)
    if stats is None:
        row["error"] = row["error"] or "no 'Time for inference' line on stderr"
        return row
    row.update(load_s=stats["load_s"], decode_s=stats["generate_s"], decode_tokens=stats["new_tokens"],
               decode_tokens_per_s=stats["tokens_per_s"], peak_memory_gb=stats["peak_memory_gb"])
    return row


def _hf_row(timed: Timed, **base: Any) -> dict:
    row = _row(**base, command=shlex.join(timed.command[:2] + ["<HF_SCRIPT>"] + timed.command[3:]),
               wall_s=timed.wall_s, error=timed.error())
    lines = [line for line in timed.stdout.decode("utf-8", errors="replace").splitlines() if line.startswith(HF_RESULT)]
    if not lines:
        row["error"] = row["error"] or "no result line on stdout"
        return row
    row.update({k: v for k, v in json.loads(lines[-1][len(HF_RESULT):]).items() if k in ROW_KEYS})
    return row


# The transformers measurement, run in a subprocess with our python: argv[1] is a JSON object of its settings.
HF_SCRIPT = r'''
import json, resource, sys, time
t_start = time.perf_counter()
import torch, tokenizers, transformers
a = json.loads(sys.argv[1])
start_up = time.perf_counter() - t_start
device = torch.device(a["device"])
cuda = device.type == "cuda"
sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
dtype = torch.bfloat16 if cuda else torch.float32
t0 = time.perf_counter()
kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
model = transformers.AutoModelForCausalLM.from_pretrained(a["hf_dir"], **kw).to(device).eval()
tok = tokenizers.Tokenizer.from_file(a["tokenizer"])
ids = torch.tensor([tok.encode(a["prompt"]).ids] * a["batch"], device=device)
sync()
load = time.perf_counter() - t0

class FirstToken:
    """A streamer that notes when the first new token is out (its first put is the prompt)."""
    def __init__(self):
        self.calls, self.t = 0, None
    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            sync()
            self.t = time.perf_counter()
    def end(self):
        pass

gen = dict(max_new_tokens=a["new_tokens"], min_new_tokens=a["new_tokens"], attention_mask=torch.ones_like(ids),
           pad_token_id=0)
if a["temperature"] > 0:
    gen.update(do_sample=True, temperature=a["temperature"], top_k=a["top_k"])
else:
    gen.update(do_sample=False)
torch.manual_seed(1234)
if cuda:
    torch.cuda.reset_peak_memory_stats(device)
streamer = FirstToken()
with torch.inference_mode():
    sync()
    t0 = time.perf_counter()
    out = model.generate(ids, streamer=streamer, **gen)
    sync()
    total = time.perf_counter() - t0
new = out.shape[1] - ids.shape[1]
first = (streamer.t - t0) if streamer.t is not None else None
decode_s = total - first if first is not None else total
decode_tokens = a["batch"] * max(new - 1, 0) if first is not None else a["batch"] * new
peak = torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("BENCHMARK_HF " + json.dumps(dict(
    start_up_s=start_up, load_s=load, first_token_s=first, decode_tokens=decode_tokens, decode_s=decode_s,
    decode_tokens_per_s=decode_tokens / decode_s if decode_s > 0 else None, peak_memory_gb=peak / 1e9,
    generated_tokens=new, transformers=transformers.__version__)), flush=True)
'''

# The parent's environment facts, probed in a subprocess so this process never holds a CUDA context.
PROBE_SCRIPT = r'''
import json, platform, sys, torch
device = sys.argv[1]
cuda = torch.cuda.is_available() and device != "cpu"
if device == "auto":
    device = "cuda" if cuda else "cpu"
name = torch.cuda.get_device_name(torch.device(device)) if cuda else (platform.processor() or platform.machine())
try:
    import transformers
    tf = transformers.__version__
except ImportError:
    tf = None
print(json.dumps(dict(device=device, device_name=name, torch=torch.__version__, transformers=tf)))
'''


def _probe(device: str) -> dict:
    """Resolved device, its name, torch and transformers versions (from a subprocess)."""
    result = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, device], capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        return {"device": "cpu" if device == "auto" else device, "device_name": None, "torch": None,
                "transformers": None}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _peer_version(peer_python: Path, env: dict, cwd: str) -> Optional[str]:
    """The peer venv's litgpt version, or None where it cannot be told."""
    try:
        result = subprocess.run([str(peer_python), "-c", "import importlib.metadata as m; print(m.version('litgpt'))"],
                                capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    text = result.stdout.strip()
    return text if result.returncode == 0 and re.fullmatch(r"\d+(\.\d+)+\S*", text) else None


def git_commit() -> Optional[str]:
    """The checkout's HEAD commit, or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _model_name(checkpoint_dir: Path) -> str:
    import yaml

    try:
        config = yaml.safe_load((checkpoint_dir / "model_config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    return str(config.get("name") or checkpoint_dir.name)


def _convert_to_hf(checkpoint_dir: Path, hf_dir: Path) -> tuple[Optional[Path], Optional[str], float]:
    """Convert with our converter: (the HF directory or None, the reason it is None, seconds)."""
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "litgpt.scripts.convert_lit_checkpoint", str(checkpoint_dir),
                             str(hf_dir)], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return None, (lines[-1] if lines else f"converter exit status {result.returncode}"), seconds
    return hf_dir, None, seconds


# ---------------------------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table (a skipped or failed row says why in its notes)."""
    head = ["tool", "model", "new tokens", "batch", "wall s", "start-up s", "load s", "prepare s",
            "first printed token s (parent)", "first token s (own)", "decode tokens/s", "peak GB", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        notes = [n for n in (f"skipped: {r['skipped']}" if r.get("skipped") else None,
                             f"error: {r['error']}" if r.get("error") else None, r.get("note")) if n]
        if r.get("temperature"):
            notes.insert(0, f"sampled T={r['temperature']:g}")
        cells = [r["tool"], r["model"], _fmt(r["new_tokens"]), _fmt(r["batch"]), _fmt(r["wall_s"], 2),
                 _fmt(r["start_up_s"]), _fmt(r["load_s"]), _fmt(r.get("prepare_s")), _fmt(r["first_printed_token_s"]),
                 _fmt(r["first_token_s"]),
                 _fmt(r["decode_tokens_per_s"], 1), _fmt(r["peak_memory_gb"]), "; ".join(notes).replace("|", "/")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _write(out_dir: Path, meta: dict, rows: list[dict]) -> None:
    text = json.dumps({"meta": meta, "rows": rows}, indent=2)
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    lines = [f"# litgpt benchmark generate: {meta['model']}", "",
             f"{meta['date']} on {meta['device_name'] or meta['device']} (torch {meta['torch']}, transformers "
             f"{meta['transformers'] or '-'}, peer litgpt {meta['peer_litgpt'] or '-'}, commit "
             f"{meta['git_commit'] or 'unknown'}), checkpoint `{meta['checkpoint']}`", "",
             f"Command: `{meta['command_line']}`", "", format_table(rows), "",
             "Wall: process start to exit, measured by the parent. First printed token: the parent's time from the "
             "process start to the first byte after the echoed prompt (the first sample of a batch streams; "
             "text that does not yet decode cleanly is held back by the command). Chat rows: wall is from sending "
             "the message to the next prompt, first printed token from sending it to the first reply byte. The "
             "other columns are each tool's own (stderr); upstream's tokens/s includes the prefill.", ""]
    md = "\n".join(lines)
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- command
def _validate(checkpoint_dir: Path, new_tokens: list[int], batches: list[int], temperature: Optional[float],
              repeats: int, chat_tokens: int, peer_python: Optional[Path], device: str, prompt: str) -> None:
    if not checkpoint_dir.is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is not a directory")
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (checkpoint_dir / name).is_file():
            raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} has no {name}")
    if not any((checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} has no tokenizer.json or tokenizer.model")
    if not new_tokens or any(n < 1 for n in new_tokens):
        raise ValueError(f"new_tokens must be a non-empty list of positive integers, got {new_tokens}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batches must be a non-empty list of positive integers, got {batches}")
    if temperature is not None and not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (or null: greedy at batch 1, sampled above), got {temperature}")
    if repeats < 1 or chat_tokens < 1:
        raise ValueError(f"repeats and chat_tokens must be >= 1, got {repeats} and {chat_tokens}")
    if not prompt:
        raise ValueError("the prompt is empty; pass some text with --prompt")
    if peer_python is not None and not (peer_python.is_file() and os.access(peer_python, os.X_OK)):
        raise ValueError(f"peer_python {str(peer_python)!r} is not an executable file")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _peer_env(device: str) -> dict:
    """Our environment without PYTHONPATH (so the peer imports its own litgpt), restricted to the chosen GPU."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return env


def benchmark_generate(
    checkpoint_dir: Path,
    new_tokens: list[int] = [100, 1000],
    batches: list[int] = [1, 8],
    prompt: str = DEFAULT_PROMPT,
    temperature: Optional[float] = None,
    repeats: int = 1,
    chat: bool = True,
    chat_tokens: int = 200,
    peer_python: Optional[Path] = None,
    hf: bool = True,
    device: str = "auto",
    out_dir: Path = Path("out/benchmark/generate"),
    extra_args: Optional[list[str]] = None,
    warmup: bool = True,
    peer_new_tokens: Optional[list[int]] = None,
) -> list[dict]:
    """Run `litgpt generate` (and a two-turn `litgpt chat`, upstream litgpt and transformers) as subprocesses on one
    checkpoint; write results.json and results.md to out_dir after every row, print the table at the end.

    Args:
        checkpoint_dir: a directory with lit_model.pth, model_config.yaml and tokenizer.json (or tokenizer.model).
        new_tokens: max_new_tokens values to run.
        batches: batch sizes to run; a batch B above 1 runs `--num_samples B --batch_size B`.
        prompt: the prompt (and the first chat message).
        temperature: sampling temperature for every row; null: greedy (0) at batch 1 and sampled at 0.8 with
            top_k 50 above (sampled decoding).
        repeats: runs of each configuration (one row each).
        chat: also run a two-turn `litgpt chat` (greedy).
        chat_tokens: max_new_tokens of each chat turn.
        peer_python: the python of another venv with upstream litgpt (0.5.13) installed; its `litgpt generate` runs
            on the same checkpoint at batch 1 (it has no batched generation).
        hf: also convert the checkpoint to Hugging Face (into out_dir/hf) and time transformers' `generate`.
        device: "auto", "cpu", "cuda" or "cuda:N" (our commands' --device; the peers are restricted to that GPU).
        out_dir: where results.json, results.md and the converted HF model go.
        extra_args: more arguments for every `litgpt generate` of ours, not chat or the peers (on the command line
            quote values YAML would read as non-strings: `--extra_args '[--compile, "true"]'`).
        warmup: first run each of our commands once untimed, filling the on-disk kernel and compile caches.
        peer_new_tokens: the new_tokens values the peers (upstream, transformers) run (null: all of new_tokens);
            each must be one of new_tokens. At about 10-20 tokens/s a peer takes a minute per 1,000 tokens.
    """
    from tqdm import tqdm

    checkpoint_dir = Path(checkpoint_dir)
    _validate(checkpoint_dir, new_tokens, batches, temperature, repeats, chat_tokens, peer_python, device, prompt)
    peer_new_tokens = list(new_tokens) if peer_new_tokens is None else list(peer_new_tokens)
    if not set(peer_new_tokens) <= set(new_tokens):
        raise ValueError(f"peer_new_tokens {peer_new_tokens} must be a subset of new_tokens {new_tokens}")
    checkpoint_dir = checkpoint_dir.resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _model_name(checkpoint_dir)
    probe = _probe(device)
    peer_dir = tempfile.TemporaryDirectory(prefix="benchmark-generate-peer-")  # the peer's cwd: not our checkout
    peer_cwd = peer_dir.name
    peer_env = _peer_env(device)
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=probe["device"],
                device_name=probe["device_name"], torch=probe["torch"], transformers=probe["transformers"],
                command_line=shlex.join(sys.argv), checkpoint=str(checkpoint_dir), model=model,
                git_commit=git_commit(), python=sys.executable, prompt=prompt,
                peer_python=str(peer_python) if peer_python else None,
                peer_litgpt=_peer_version(peer_python, peer_env, peer_cwd) if peer_python else None)
    rows: list[dict] = []
    hf_state: dict[str, Any] = {}

    def temperature_for(batch: int) -> float:
        return temperature if temperature is not None else (0.0 if batch == 1 else SAMPLED_TEMPERATURE)

    def ours_command(n: int, batch: int) -> list[str]:
        command = [sys.executable, "-m", "litgpt", "generate", str(checkpoint_dir), "--prompt", prompt,
                   "--max_new_tokens", str(n), "--temperature", str(temperature_for(batch)), "--device", device]
        if batch > 1:
            command += ["--num_samples", str(batch), "--batch_size", str(batch)]
        return command + list(extra_args or [])

    def ours(n: int, batch: int, repeat: int) -> list[dict]:
        return [_ours_row(run_timed(ours_command(n, batch)), prompt, tool=TOOL_OURS, model=model, new_tokens=n,
                          batch=batch, temperature=temperature_for(batch), repeat=repeat)]

    def upstream(n: int, batch: int, repeat: int) -> list[dict]:
        t = temperature_for(batch)
        base = dict(tool=TOOL_UPSTREAM + (f" {meta['peer_litgpt']}" if meta["peer_litgpt"] else ""), model=model,
                    new_tokens=n, batch=batch, temperature=t, repeat=repeat)
        if batch > 1:
            return [_row(**base, skipped="upstream `litgpt generate` has no --batch_size")]
        command = [str(peer_python), "-m", "litgpt", "generate", str(checkpoint_dir), "--prompt", prompt,
                   "--max_new_tokens", str(n), "--temperature", str(t)]
        return [_upstream_row(run_timed(command, env=peer_env, cwd=Path(peer_cwd)), prompt, **base)]

    def transformers(n: int, batch: int, repeat: int) -> list[dict]:
        t = temperature_for(batch)
        base = dict(tool=TOOL_HF, model=model, new_tokens=n, batch=batch, temperature=t, repeat=repeat)
        if not hf_state:
            hf_dir, reason, seconds = _convert_to_hf(checkpoint_dir, out_dir / "hf")
            hf_state.update(dir=hf_dir, reason=reason)
            meta.update(hf_dir=str(hf_dir) if hf_dir else None, hf_convert_s=seconds, hf_skipped=reason)
        if hf_state["dir"] is None:
            return [_row(**base, skipped=hf_state["reason"])]
        if not (checkpoint_dir / "tokenizer.json").is_file():
            return [_row(**base, skipped="no tokenizer.json for the `tokenizers` library")]
        settings = dict(hf_dir=str(hf_state["dir"]), tokenizer=str(checkpoint_dir / "tokenizer.json"), prompt=prompt,
                        new_tokens=n, batch=batch, temperature=t, top_k=SAMPLED_TOP_K, device=probe["device"])
        return [_hf_row(run_timed([sys.executable, "-c", HF_SCRIPT, json.dumps(settings)]), **base)]

    chat_command = [sys.executable, "-m", "litgpt", "chat", str(checkpoint_dir), "--max_new_tokens", str(chat_tokens),
                    "--temperature", "0", "--device", device]
    chat_lines = [prompt, SECOND_MESSAGE, ""]

    def chat_turns(repeat: int) -> list[dict]:
        timed = run_timed(chat_command, lines=chat_lines)
        return _chat_rows(timed, 2, model=model, batch=1, temperature=0.0, repeat=repeat)

    def warm(command: list[str], lines: Optional[list[str]] = None) -> list[dict]:
        timed = run_timed(command, lines=lines)
        meta["warmup_s"].append(round(timed.wall_s, 3))
        return []

    jobs: list[tuple[str, Callable[[], list[dict]]]] = []
    meta.update(warmup=warmup, warmup_s=[])
    if warmup:
        for n in new_tokens:
            for batch in batches:
                jobs.append((f"warm-up {n}x{batch}", lambda n=n, b=batch: warm(ours_command(n, b))))
        if chat:
            jobs.append(("warm-up chat", lambda: warm(chat_command, chat_lines)))
    for n in new_tokens:
        for batch in batches:
            for repeat in range(repeats):
                jobs.append((f"ours {n}x{batch}", lambda n=n, b=batch, r=repeat: ours(n, b, r)))
            if peer_python is not None and n in peer_new_tokens:
                for repeat in range(repeats):
                    jobs.append((f"upstream {n}x{batch}", lambda n=n, b=batch, r=repeat: upstream(n, b, r)))
            if hf and n in peer_new_tokens:
                for repeat in range(repeats):
                    jobs.append((f"HF {n}x{batch}", lambda n=n, b=batch, r=repeat: transformers(n, b, r)))
    if chat:
        for repeat in range(repeats):
            jobs.append(("chat", lambda r=repeat: chat_turns(r)))

    _write(out_dir, meta, rows)
    progress = tqdm(jobs, desc="benchmark generate", unit="run")
    try:
        for label, job in progress:
            progress.set_postfix_str(label)
            for row in job():
                rows.append(row)
                if row["error"]:
                    progress.write(f"benchmark generate: {row['tool']} {row['new_tokens']}x{row['batch']}: "
                                   f"{row['error']}")
            _write(out_dir, meta, rows)
    finally:
        progress.close()
        peer_dir.cleanup()
    print(format_table(rows))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return rows
