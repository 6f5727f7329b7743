"""QLoRA: frozen base weights stored quantized by bitsandbytes, through Lightning Fabric's `BitsandbytesPrecision`.

`--quantize bnb.<mode>` picks the layer Fabric swaps each nn.Linear for, the inner `.linear` of a LoRA layer included
(`litgpt.lora.LoRALinear` is not an nn.Linear, so its A and B stay trainable tensors in the compute dtype):

  bnb.nf4, bnb.fp4          4-bit NormalFloat / float weights, one absmax per 64 weights
  bnb.nf4-dq, bnb.fp4-dq    the same with the absmax values quantized too ("double quantization", QLoRA paper)
  bnb.int8-training         LLM.int8() matmuls over fp16 weights (the weights stay fp16; needs --precision 16-true)

The quantized layers compute in one dtype, the precision's: a "-true" precision, not a mixed one. Fabric runs the
plugin on CUDA only (its connector refuses other accelerators), although bitsandbytes' CPU backend (0.50) can
quantize and run nf4/fp4 layers; `check_quantize` says so in one line before anything is built.

With Fabric: build the model under `fabric.init_module()` (the plugin makes its nn.Linears quantized layers there,
quantized on the GPU as they are created and again as `load_state_dict` fills them), call `apply_lora` inside the
same block (A and B are then made in the compute dtype), and `mark_only_lora_as_trainable` after
`fabric.setup_module` (int8 layers come back trainable from conversion). Or load the model in the compute dtype
(`compute_dtype`) and let `fabric.setup` convert it: the plugin swaps and quantizes only the linears and casts
nothing else, so a model loaded in float32 would keep float32 embeddings, norms and LoRA weights, and with them a
float32 residual stream, activations and logits (twice the activation memory of bf16; on an H200, QLoRA's peak then
exceeded LoRA's under bf16-mixed, 2026-12-01). Quantized weights cannot be folded for
decoding or merged in place: merge a QLoRA run into its full-precision base with `litgpt merge_lora`.

Inference (`litgpt generate/chat --quantize`, `LLM.distribute(quantize=...)`) needs no Fabric: `quantize_linears` swaps
a loaded model's linears for bitsandbytes' layers itself (`INFERENCE_MODES`), on CUDA or the CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import torch

QUANTIZE_MODES = ("bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8-training")
# the compute dtype of each precision the quantized layers take
PRECISION_DTYPES = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "16-true": torch.float16}
INSTALL_HINT = 'pip install -e ".[quantize]"'


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_quantize(quantize: Optional[str], device_type: str, precision: str) -> None:
    """Raise a one-line ValueError unless `--quantize quantize` can run here with `--precision precision` on a
    device of `device_type` ("cuda", "cpu", ...); nothing to check for quantize None."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(_unknown_mode(quantize))
    if precision not in PRECISION_DTYPES:
        raise ValueError(
            f"--quantize {quantize} computes in one dtype and does not take --precision {precision}; use one of "
            f"{', '.join(PRECISION_DTYPES)} (e.g. bf16-true)"
        )
    if quantize == "bnb.int8-training" and precision != "16-true":
        raise ValueError(f"--quantize bnb.int8-training computes in float16; use --precision 16-true, not {precision}")
    if not bitsandbytes_available():
        raise ValueError(f"--quantize {quantize} needs bitsandbytes, which is not installed; run `{INSTALL_HINT}`")
    if device_type != "cuda":
        raise ValueError(
            f"--quantize {quantize} needs a CUDA GPU: Lightning Fabric's BitsandbytesPrecision runs only on CUDA "
            f"(this run is on {device_type}); drop --quantize to fine-tune here"
        )


def quantization_plugin(quantize: str, precision: str) -> Any:
    """Lightning Fabric's `BitsandbytesPrecision` for `--quantize quantize` (a `QUANTIZE_MODES` entry) computing in
    `precision`'s dtype: pass it as `Fabric(plugins=...)` (with no `precision=`). Call `check_quantize` first for
    the one-line errors; this raises them too for an unknown mode or precision."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(_unknown_mode(quantize))
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"--quantize needs one of the precisions {', '.join(PRECISION_DTYPES)}, got {precision!r}")
    if not bitsandbytes_available():
        raise ValueError(f"--quantize {quantize} needs bitsandbytes, which is not installed; run `{INSTALL_HINT}`")
    from lightning.fabric.plugins import BitsandbytesPrecision

    return BitsandbytesPrecision(mode=quantize.removeprefix("bnb."), dtype=PRECISION_DTYPES[precision])


def compute_dtype(precision_plugin: Any) -> Optional[torch.dtype]:
    """The dtype a quantization plugin (Fabric's `BitsandbytesPrecision`) computes in, the one to load the model in
    before `fabric.setup` converts it; None for any other precision plugin (those cast the model themselves)."""
    from lightning.fabric.plugins import BitsandbytesPrecision

    return precision_plugin.dtype if isinstance(precision_plugin, BitsandbytesPrecision) else None


def _unknown_mode(quantize: str) -> str:
    return f"--quantize {quantize!r} is not a quantization mode; choose one of {', '.join(QUANTIZE_MODES)}"


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether a weight is a bitsandbytes quantized parameter (4-bit or int8)."""
    return type(weight).__module__.startswith("bitsandbytes")


# ---------------------------------------------------------------------------------------------- inference
# `litgpt generate/chat --quantize`: the model's linear layers swapped for bitsandbytes' quantized ones after loading
INFERENCE_MODES = ("bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8")
# linears kept in full precision: the LM head (bitsandbytes' and transformers' usual exception; it may share the
# embedding's weight) and MLA's kv_b_proj, whose weight the absorbed decode path reads as a matrix (W_UK, W_UV)
FULL_PRECISION_LINEARS = ("lm_head", "kv_b_proj")
# bitsandbytes (0.50) repacks a 4-bit weight for its AVX512-BF16 CPU kernel on the first call, which asserts whole
# blocks of this many output rows; other layers take its generic path
CPU_PACKED_ROWS = 32
INT8_THRESHOLD = 6.0  # LLM.int8()'s outlier threshold: input columns above it are multiplied in 16-bit


def check_inference_quantize(quantize: Optional[str]) -> None:
    """Raise a one-line ValueError unless `--quantize quantize` names an inference mode and bitsandbytes is
    installed (its CPU backend runs every mode, as CUDA does); nothing to check for None."""
    if quantize is None:
        return
    if quantize not in INFERENCE_MODES:
        hint = " (bnb.int8-training is for fine-tuning; use bnb.int8)" if quantize == "bnb.int8-training" else ""
        raise ValueError(
            f"--quantize {quantize!r} is not a quantization mode for inference{hint}; choose one of "
            f"{', '.join(INFERENCE_MODES)}"
        )
    if not bitsandbytes_available():
        raise ValueError(f"--quantize {quantize} needs bitsandbytes, which is not installed; run `{INSTALL_HINT}`")


@torch.no_grad()
def quantize_linears(model: torch.nn.Module, quantize: str, device: Optional[torch.device] = None) -> list[str]:
    """Replace every `nn.Linear` of `model` but those named in `FULL_PRECISION_LINEARS` by a bitsandbytes layer
    holding its weight quantized (`bnb.nf4`/`bnb.fp4`: 4-bit, one absmax per 64 weights, `-dq` with the absmax
    values quantized too; `bnb.int8`: LLM.int8(), int8 rows with their scales), computing in the weight's dtype;
    biases stay as they are. The layers are quantized on `device` (default: the weight's) and, when `device` is
    given, the rest of the model moves there too: a model loaded on the CPU reaches a GPU with its linears already
    quantized, never holding their full-precision weights there. Returns the names of the layers replaced.

    Quantized weights cannot be folded for decoding: a decode session of a quantized model steps through the
    blocks' own modules (`litgpt.fold.check_foldable`)."""
    check_inference_quantize(quantize)
    import warnings

    with warnings.catch_warnings():  # bitsandbytes' own deprecation warnings, on import
        warnings.simplefilter("ignore", DeprecationWarning)
        import bitsandbytes as bnb

    mode = quantize.removeprefix("bnb.")
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and name.rpartition(".")[2] not in FULL_PRECISION_LINEARS]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        weight, bias = linear.weight, linear.bias
        if mode == "int8":
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                        has_fp16_weights=False, threshold=INT8_THRESHOLD, device="meta")
            layer.weight = bnb.nn.Int8Params(weight.data, requires_grad=False, has_fp16_weights=False)
        else:
            quant_type, double = mode.removesuffix("-dq"), mode.endswith("-dq")
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                      compute_dtype=weight.dtype, quant_type=quant_type,
                                      compress_statistics=double, device="meta")
            layer.weight = bnb.nn.Params4bit(weight.data, requires_grad=False, quant_type=quant_type,
                                             compress_statistics=double)
            if hasattr(layer, "support_avx512bf16_for_cpu") and not cpu_bf16_kernel_applies(linear, weight.dtype):
                layer.support_avx512bf16_for_cpu = False
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.data, requires_grad=False)
        setattr(parent, child, layer.to(weight.device if device is None else device))  # moving quantizes them
    if device is not None:  # everything else follows, module by module (the quantized layers are there already)
        quantized_types = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
        for module in model.modules():
            if not isinstance(module, quantized_types):
                module._apply(lambda t: t.to(device), recurse=False)
    return [name for name, _ in targets]


def cpu_bf16_kernel_applies(linear: torch.nn.Linear, dtype: torch.dtype) -> bool:
    """Whether bitsandbytes' AVX512-BF16 CPU kernel computes this 4-bit layer as asked: it computes in bfloat16
    whatever the compute dtype (so only a bfloat16 model may use it), and its repacking needs whole blocks of
    CPU_PACKED_ROWS rows and input widths in multiples of the 64-weight quantization block."""
    return (dtype == torch.bfloat16 and linear.out_features % CPU_PACKED_ROWS == 0
            and linear.in_features % 64 == 0)


def has_quantized_weights(model: torch.nn.Module) -> bool:
    """Whether any parameter of `model` is a bitsandbytes quantized one."""
    return any(is_quantized(p) for p in model.parameters())
