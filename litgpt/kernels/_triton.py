"""Where the Triton kernels of `litgpt.kernels` may run (availability, dtypes, the device a launch needs), and the
warm-up of a process about to launch them (`start_warm_up`)."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from typing import ContextManager, Optional

import torch

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def triton_can_run(tensors: tuple[torch.Tensor, ...]) -> bool:
    """True where a Triton kernel may take these inputs: Triton installed, all on one CUDA device, bf16/fp16 of one
    dtype, no autograd."""
    first = tensors[0]
    return (
        TRITON_AVAILABLE
        and first.is_cuda
        and first.dtype in KERNEL_DTYPES
        and all(t.dtype == first.dtype and t.device == first.device for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def kernel_applies(tensors: tuple[torch.Tensor, ...], widths: tuple[int, ...]) -> bool:
    """`triton_can_run`, unit last strides, and every width a positive multiple of 16 (the decode kernels' tiles)."""
    return (
        triton_can_run(tensors)
        and all(t.stride(-1) == 1 for t in tensors)
        and all(w % 16 == 0 and w > 0 for w in widths)
    )


def fp8_kernels_run(t: torch.Tensor) -> bool:
    """Whether the Triton kernels read and write e4m3 caches on t's device: CUDA with compute capability 8.9 or
    newer (Ada, Hopper and later). Elsewhere (the CPU, older GPUs) fp8 caches take the torch path."""
    return TRITON_AVAILABLE and t.is_cuda and torch.cuda.get_device_capability(t.device) >= (8, 9)


def on_device(t: torch.Tensor) -> ContextManager:
    """The CUDA device of `t` as the current one for a launch (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def start_warm_up(device: torch.device) -> Optional[threading.Thread]:
    """Start, in a background thread, the per-process set-up that a process about to decode on `device` (CUDA) would
    otherwise pay later on the main thread; returns the thread (None for other devices).

    First the CUDA context, which the weights' first copy to the device would create, and cuBLAS's handle, which the
    prefill's first matmul would. Then Triton's per-process cache key: a SHA-256 over Triton's compiler sources and
    its libtriton binary (`triton.runtime.cache.triton_key`; 0.7-0.9 s on our CI's CPU), computed at the first kernel
    launch, which falls inside the decode step's capture. Their long parts release the GIL, so they overlap the
    tokenizer's and the checkpoint's loading.
    """
    if device.type != "cuda":
        return None
    thread = threading.Thread(target=_warm_up, args=(device,), name="litgpt-warm-up", daemon=True)
    thread.start()
    return thread


def _warm_up(device: torch.device) -> None:
    if torch.cuda.is_available():
        torch.empty(0, device=device)  # the context (the main thread's first CUDA call waits for it, not twice)
        # cuBLAS: its handle and first kernels (the thread's handles go back to torch's pool when it ends, for the
        # main thread's prefill to take)
        ones = torch.ones(16, 16, device=device, dtype=torch.bfloat16)
        torch.mm(ones, ones)
    if not TRITON_AVAILABLE:
        return
    try:
        from triton.runtime.cache import triton_key  # Triton 3.x; older versions keep it elsewhere: nothing to warm
    except ImportError:
        return
    triton_key()
