"""The Triton launches as torch operators (`torch.ops.litgpt.*`), so torch.compile and CUDA graphs see each as one
opaque node with a declared schema, instead of tracing into a launcher.

Registered with the dispatcher directly (`torch.library.Library`), not with `torch.library.custom_op`: custom_op
wraps every implementation in `torch._disable_dynamo`, which imports torch._dynamo at the first call, and that
import (with sympy and the FSDP modules it pulls in) cost `litgpt generate` 1-5 s inside its first decode step on
an H200. A call through `torch.ops` runs the implementation with nothing around it.
"""

from __future__ import annotations

from typing import Callable

import torch

_LIBRARY = torch.library.Library("litgpt", "FRAGMENT")


def define_op(name: str, schema: str, impl: Callable[..., object], fake: Callable[..., object]) -> Callable[..., object]:
    """Define `litgpt::name` with `schema` (e.g. "(Tensor x, float eps) -> Tensor"; mutated inputs annotated
    `Tensor(a!)`), run by `impl` on every device and by `fake` on fake/meta tensors (shapes only: what torch.compile
    traces with). Returns the operator to call."""
    _LIBRARY.define(name + schema)
    _LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"litgpt::{name}", fake, lib=_LIBRARY)
    return getattr(torch.ops.litgpt, name).default
