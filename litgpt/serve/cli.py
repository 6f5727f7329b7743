"""`litgpt serve CHECKPOINT_DIR`: the OpenAI-compatible server (`litgpt.serve.api`) over the continuous-batching
engine (`litgpt.serve.engine`), run by uvicorn.

The checkpoint loads as `litgpt generate` loads it (`litgpt.generate.loading.load_llm`: precision, quantization,
prompt style); the engine gets the model, the tokenizer and the prompt style's one-token stops. SIGTERM or Ctrl-C
stops taking connections, lets the requests in flight finish (uvicorn's graceful shutdown), then drains and stops
the engine.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import Optional

from litgpt.generate.base import SamplingParams, peak_memory_bytes, resolve_device
from litgpt.hub import CHECKPOINTS_ROOT
from litgpt.quantize import check_inference_quantize


def model_names(checkpoint_dir: Path) -> tuple[str, tuple[str, ...]]:
    """The served model's id and the other names a request may give: a downloaded model (checkpoints/ORG/NAME) is
    ORG/NAME, as the hub names it; any other checkpoint is its path as given."""
    path = str(checkpoint_dir)
    try:
        relative = Path(checkpoint_dir).resolve().relative_to(CHECKPOINTS_ROOT.resolve())
    except ValueError:
        return path, ()
    return relative.as_posix(), (path,)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free port), or a one-line error naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    checkpoint_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 64,
    max_queue: int = 1024,
    kv_cache_gib: Optional[float] = None,
    page_size: int = 16,
    kv_cache_dtype: Optional[str] = None,
    max_prefill_tokens: int = 8192,
    prefix_caching: bool = True,
    api_key: Optional[str] = None,
    accelerator: str = "auto",
    precision: Optional[str] = None,
    quantize: Optional[str] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: float = 1.0,
    max_new_tokens: Optional[int] = None,
    prompt_style: Optional[str] = None,
) -> None:
    """Serve a checkpoint over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models, /health.

    Args:
        checkpoint_dir: a directory with lit_model.pth, model_config.yaml and tokenizer files, or the hub id ORG/NAME
            of a model `litgpt download` put in checkpoints/ORG/NAME.
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: the TCP port (0: any free port, printed at start).
        max_batch_size: the most sequences decoding at once (the rows of the decode step).
        max_queue: the most requests waiting for a row; more are answered 429.
        kv_cache_gib: GiB of paged KV cache (default: the engine's share of the free device memory).
        page_size: tokens per page of the KV cache.
        kv_cache_dtype: the KV cache's format: null (the weights' dtype) or fp8_e4m3 (e4m3 values with float32
            scales: for MLA 256 + 32, 328 bytes per token and layer against 576 in bf16; `litgpt.kv_cache`), so
            the same kv_cache_gib holds more tokens.
        max_prefill_tokens: the most prompt tokens prefilled between two decode steps (chunked prefill), which bounds
            how long a long prompt delays the running requests; new prompts of one length prefill in one forward.
        prefix_caching: requests that share a prompt prefix share its cache pages.
        api_key: when set, every /v1 request must send `Authorization: Bearer <api_key>` (401 otherwise).
        accelerator: "auto" (CUDA when available), "cpu", "cuda", "gpu" or "cuda:N".
        precision: weight precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        quantize: store the linear layers' weights quantized by bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4,
            bnb.fp4-dq or bnb.int8.
        temperature: the temperature of a request that sets none (0 is greedy).
        top_k: the top_k of a request that sets none (null: all tokens).
        top_p: the top_p of a request that sets none.
        max_new_tokens: the max_tokens of a request that sets none (default: 16 for completions, as OpenAI's, the
            rest of the context for chat).
        prompt_style: how chat messages are framed (default: the checkpoint's prompt_style.yaml, else its chat
            template, else plain text).
    """
    import uvicorn

    from litgpt.generate.loading import load_llm
    from litgpt.kv_cache import check_kv_cache_dtype
    from litgpt.serve.api import SamplingDefaults, ServedModel, create_app
    from litgpt.serve.engine import Engine

    SamplingParams(temperature, top_k, top_p)  # bad defaults fail before the weights load
    check_inference_quantize(quantize)
    check_kv_cache_dtype(kv_cache_dtype)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if api_key is not None and not api_key.strip():
        raise ValueError("--api_key is empty; pass a key, or leave the option out to serve without one")
    if not re.fullmatch(r"auto|cpu|gpu|cuda(:\d+)?", accelerator):
        raise ValueError(f"--accelerator must be auto, cpu, cuda, gpu or cuda:N, got {accelerator!r}")
    device = resolve_device("cuda" if accelerator == "gpu" else accelerator)
    sock = listen(host, port)  # a port in use fails before the weights load
    llm = load_llm(checkpoint_dir, str(device), precision, prompt_style, quantize)
    tokenizer, style = llm.tokenizer, llm.prompt_style
    stop_ids = [s[0] for s in style.stop_tokens(tokenizer) if len(s) == 1]
    engine = Engine(llm.model, tokenizer, max_batch_size=max_batch_size, kv_cache_gib=kv_cache_gib,
                    page_size=page_size, max_prefill_tokens=max_prefill_tokens, max_queue=max_queue,
                    stop_token_ids=stop_ids, prefix_caching=prefix_caching, kv_cache_dtype=kv_cache_dtype)
    engine.capture()  # every row bucket's decode step before the first request, not while requests wait
    name, aliases = model_names(checkpoint_dir)

    def memory() -> dict:
        peak, kind = peak_memory_bytes(device)
        return {"peak_memory_bytes": peak, "peak_memory_kind": kind}

    model = ServedModel(name, tokenizer, style, llm.model.max_seq_length,
                        min(tokenizer.vocab_size, llm.model.config.padded_vocab_size),
                        aliases, memory)
    defaults = SamplingDefaults(temperature, top_k, top_p, max_new_tokens)
    app = create_app(engine, model, defaults, api_key)
    bound_host, bound_port = sock.getsockname()[:2]
    sys.stderr.write(f"litgpt serve: {name} on http://{bound_host}:{bound_port}/v1 (context "
                     f"{model.max_seq_length} tokens, up to {max_batch_size} sequences at once)\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=None)
    uvicorn.Server(config).run(sockets=[sock])
