"""QLoRA (litgpt/quantize.py): the one-line checks, Lightning's BitsandbytesPrecision converting a LoRA model's
frozen linears (bitsandbytes' CPU backend runs nf4/fp4 and int8), training only LoRA on top, and reloading the LoRA
file. Skipped, with the reason, where bitsandbytes is not installed or its CPU kernels do not run."""

import copy
import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litgpt import GPT, Config
from litgpt.fold import fold_for_decode
from litgpt.lora import (
    LoRASpec,
    apply_lora,
    load_base_state_dict,
    load_lora_state_dict,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
)
from litgpt.projection import dense_weight
from litgpt.quantize import (
    cpu_bf16_kernel_applies,
    INSTALL_HINT,
    QUANTIZE_MODES,
    check_quantize,
    compute_dtype,
    is_quantized,
    quantization_plugin,
)
from test_fold import decode_logits
from test_model import randomize

HAVE_BNB = importlib.util.find_spec("bitsandbytes") is not None
FOUR_BIT = [m for m in QUANTIZE_MODES if m != "bnb.int8-training"]


def cpu_kernels_missing() -> str:
    """Why bitsandbytes cannot quantize on this CPU ("" when it can)."""
    if not HAVE_BNB:
        return "bitsandbytes is not installed (pip install -e '.[quantize]')"
    with warnings.catch_warnings():  # bitsandbytes' own uses of the deprecated torch.jit.script_method, on import
        warnings.simplefilter("ignore", DeprecationWarning)
        import bitsandbytes.functional as bnb_functional

    try:
        packed, state = bnb_functional.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        bnb_functional.dequantize_4bit(packed, state)
    except Exception as e:  # noqa: BLE001  (a build without the CPU backend raises one of several types)
        return f"bitsandbytes' CPU backend cannot quantize here ({type(e).__name__}: {e})"
    return ""


needs_bnb_cpu = pytest.mark.skipif(bool(cpu_kernels_missing()), reason=cpu_kernels_missing() or "-")
SPEC = LoRASpec(r=4, alpha=8, dropout=0.0, query=True, value=True, mlp=True, head=True)


# ---------------------------------------------------------------------------------------------- the checks
def test_check_quantize_errors_are_one_line(monkeypatch):
    check_quantize(None, "cpu", "bf16-mixed")  # nothing to check
    cases = [
        (("bnb.nf8", "cuda", "bf16-true"), r"--quantize 'bnb.nf8' is not a quantization mode; choose one of bnb.nf4,"),
        (("bnb.nf4", "cuda", "bf16-mixed"), r"does not take --precision bf16-mixed; use one of 32-true, bf16-true"),
        (("bnb.int8-training", "cuda", "bf16-true"), r"computes in float16; use --precision 16-true, not bf16-true"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            check_quantize(*args)
        assert "\n" not in str(e.value)
    monkeypatch.setattr("litgpt.quantize.bitsandbytes_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs bitsandbytes, which is not installed; run `pip install -e "
                                         r"\"\.\[quantize\]\"`"):
        check_quantize("bnb.nf4", "cuda", "bf16-true")
    assert INSTALL_HINT == 'pip install -e ".[quantize]"'
    with pytest.raises(ValueError, match="needs bitsandbytes"):
        quantization_plugin("bnb.nf4", "bf16-true")


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed (pip install -e '.[quantize]')")
def test_cpu_is_refused_with_the_reason_and_the_plugin_is_fabrics():
    with pytest.raises(ValueError, match=r"--quantize bnb.nf4 needs a CUDA GPU: Lightning Fabric's "
                                         r"BitsandbytesPrecision runs only on CUDA \(this run is on cpu\)"):
        check_quantize("bnb.nf4", "cpu", "bf16-true")
    check_quantize("bnb.nf4-dq", "cuda", "bf16-true")
    from lightning.fabric.plugins import BitsandbytesPrecision

    plugin = quantization_plugin("bnb.nf4-dq", "bf16-true")
    assert isinstance(plugin, BitsandbytesPrecision) and plugin.dtype == torch.bfloat16
    assert plugin._linear_cls.__name__ == "_NF4DQLinear"
    assert quantization_plugin("bnb.int8-training", "16-true").dtype == torch.float16


# ---------------------------------------------------------------------------------------------- QLoRA on the CPU
def make_qlora(mode: str, precision: str = "32-true") -> tuple[GPT, GPT, object]:
    """(an unquantized LoRA model with random updates, its copy with the linears converted by Fabric's plugin, the
    plugin)."""
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=32, vocab_size=100, padding_multiple=64, latent_attention=True)
    model = randomize(GPT(config)).eval()
    apply_lora(model, SPEC)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0.0, 0.1)
    plugin = quantization_plugin(mode, precision)
    quantized = plugin.convert_module(copy.deepcopy(model)).to("cpu")  # bitsandbytes quantizes as it moves
    mark_only_lora_as_trainable(quantized)  # conversion makes fresh base parameters
    return model, quantized, plugin


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@needs_bnb_cpu
@pytest.mark.parametrize("mode", FOUR_BIT)
def test_4bit_base_weights_are_stored_quantized_and_lora_trains_on_top(mode):
    import bitsandbytes as bnb

    model, quantized, plugin = make_qlora(mode)
    linears = _linears(quantized)
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears.values())
    assert all(is_quantized(m.weight) and m.weight.dtype == torch.uint8 for m in linears.values())
    assert "transformer.h.0.attn.kv_b_proj.linear" in linears  # the LoRA layer's base, swapped inside it
    full_bytes = sum(m.weight.numel() * 4 for m in _linears(model).values())
    absmax = [m.weight.quant_state.absmax for m in linears.values()]
    packed_bytes = sum(m.weight.numel() for m in linears.values()) + sum(a.numel() * a.element_size() for a in absmax)
    assert packed_bytes < 0.15 * full_bytes  # 4 bits per weight plus one absmax per 64 (float32, or 8-bit with -dq)
    assert all(p.dtype == torch.float32 for p in lora_parameters(quantized))  # the compute dtype

    idx = torch.randint(0, 100, (2, 10))
    # the same LoRA model over the dequantized base weights: what the quantized one must compute
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, linear in _linears(reference).items():
            linear.weight.copy_(dense_weight(linears[name].weight))
        with plugin.forward_context():
            got = quantized(idx)
        torch.testing.assert_close(got, reference(idx), rtol=1e-5, atol=1e-5)
        # against full precision (relative Frobenius errors; measured: weights nf4 0.093, fp4 0.124; logits of these
        # random N(0, 0.2) two-layer models nf4 0.20, fp4 0.27)
        for name, linear in _linears(model).items():
            weight = linear.weight
            assert (dense_weight(linears[name].weight) - weight).norm() < 0.15 * weight.norm()
        full = model(idx)
        assert (got - full).norm() < 0.35 * full.norm()

    if mode == "bnb.nf4":  # cached decode, MLA's absorbed one-token steps included, reads the dequantized weights
        prompt, steps = idx[:, :6], idx[:, 6:]
        with torch.no_grad():
            torch.testing.assert_close(decode_logits(quantized, prompt, steps), got[:, 6:], rtol=1e-4, atol=1e-4)
        quantized.clear_kv_cache()

    loss = quantized(idx, targets=idx.roll(-1, 1))  # the fused loss reads the quantized head dequantized
    torch.testing.assert_close(loss, F.cross_entropy(got.flatten(0, 1), idx.roll(-1, 1).flatten()), rtol=1e-5,
                               atol=1e-5)
    packed = {n: m.weight.clone() for n, m in linears.items()}
    lora_before = [p.clone() for p in lora_parameters(quantized)]
    optimizer = torch.optim.AdamW(lora_parameters(quantized), lr=1e-2)
    quantized.train()
    for _ in range(2):
        optimizer.zero_grad()
        quantized(idx, targets=idx.roll(-1, 1)).backward()
        optimizer.step()
    assert all(torch.equal(m.weight, packed[n]) for n, m in linears.items())
    assert all(not torch.equal(p, q) for p, q in zip(lora_parameters(quantized), lora_before))

    with pytest.raises(ValueError, match=r"fold_for_decode: .* is quantized \(torch.uint8\); fold a full-precision"):
        fold_for_decode(_merged_copy(quantized))
    with pytest.raises(ValueError, match=r"cannot merge LoRA into quantized base weights .*litgpt merge_lora"):
        merge_lora(quantized)


def _merged_copy(model: GPT) -> GPT:
    """A copy whose LoRA layers count as merged, so folding meets the quantized weights themselves."""
    merged = copy.deepcopy(model)
    for _, m in lora_modules(merged):
        m.merged = True
    return merged


@needs_bnb_cpu
def test_the_lora_file_of_a_quantized_model_reloads(tmp_path):
    model, quantized, plugin = make_qlora("bnb.nf4-dq")
    with torch.no_grad():
        for p in lora_parameters(quantized):
            p.add_(0.01)
    torch.save(lora_state_dict(quantized), tmp_path / "lit_model.pth.lora")
    fresh_model = copy.deepcopy(model)
    for _, m in lora_modules(fresh_model):
        m.reset_lora_parameters()
    fresh = plugin.convert_module(fresh_model).to("cpu")
    load_lora_state_dict(fresh, torch.load(tmp_path / "lit_model.pth.lora", weights_only=True))
    idx = torch.randint(0, 100, (2, 10))
    with torch.no_grad(), plugin.forward_context():
        torch.testing.assert_close(fresh(idx), quantized(idx), rtol=0, atol=0)
    # the full-precision LoRA model takes the same file (the QLoRA run's weights merge into the unquantized base)
    load_lora_state_dict(model, torch.load(tmp_path / "lit_model.pth.lora", weights_only=True))
    assert torch.equal(model.lm_head.lora_B, quantized.lm_head.lora_B)


@needs_bnb_cpu
def test_int8_training_runs_lora_on_llm_int8_matmuls():
    import bitsandbytes as bnb

    model, quantized, plugin = make_qlora("bnb.int8-training", "16-true")
    assert all(isinstance(m, bnb.nn.Linear8bitLt) for m in _linears(quantized).values())
    idx = torch.randint(0, 100, (2, 10))
    with torch.no_grad(), plugin.forward_context():
        got, full = quantized(idx), model(idx)
    assert (got.float() - full).norm() < 0.05 * full.norm()  # int8 rows, outlier columns kept in fp16
    quantized(idx, targets=idx).backward()
    assert all(p.grad is not None for p in lora_parameters(quantized))
    assert all(not m.weight.requires_grad for m in _linears(quantized).values())


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed (pip install -e '.[quantize]')")
def test_a_quantized_model_loads_in_the_plugins_compute_dtype():
    from lightning.fabric.plugins import HalfPrecision

    assert compute_dtype(quantization_plugin("bnb.nf4", "bf16-true")) == torch.bfloat16
    assert compute_dtype(quantization_plugin("bnb.int8-training", "16-true")) == torch.float16
    assert compute_dtype(HalfPrecision("bf16-true")) is None  # casts the float32 model itself


# ---------------------------------------------------------------------------------------------- with Fabric (CUDA)
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed (pip install -e '.[quantize]')")
def test_fabric_qlora_flow_on_cuda():
    """The flow the fine-tune command runs: the model built in `fabric.init_module()` (quantized layers from the
    start), LoRA applied there, a plain checkpoint loaded and quantized on load, the LoRA file reloaded."""
    from lightning.fabric import Fabric

    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=32, vocab_size=100, padding_multiple=64, latent_attention=True)
    plain = randomize(GPT(config)).eval()
    check_quantize("bnb.nf4", "cuda", "bf16-true")
    fabric = Fabric(accelerator="cuda", devices=1, plugins=quantization_plugin("bnb.nf4", "bf16-true"))
    with fabric.init_module():
        model = GPT(config)
        apply_lora(model, SPEC)
    model = fabric.setup_module(model)
    mark_only_lora_as_trainable(model)
    load_base_state_dict(model, plain.state_dict())
    assert all(p.dtype == torch.bfloat16 for p in lora_parameters(model))
    assert is_quantized(model.transformer.h[0].attn.kv_b_proj.linear.weight)
    idx = torch.randint(0, 100, (2, 10), device="cuda")
    with torch.no_grad():
        got = model(idx).float().cpu()
        full = plain(idx.cpu())
    assert (got - full).norm() < 0.35 * full.norm()
    loss = model(idx, targets=idx)
    fabric.backward(loss)
    assert all(p.grad is not None for p in lora_parameters(model))
    sd = lora_state_dict(model)
    load_lora_state_dict(model, {k: v + 0 for k, v in sd.items()})


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed (pip install -e '.[quantize]')")
def test_fabric_converts_a_loaded_lora_model_on_cuda():
    """The other order (`litgpt finetune_lora`'s): a loaded float32 model, LoRA applied, then `fabric.setup`
    swaps and quantizes the linears as it moves them to the GPU."""
    from lightning.fabric import Fabric

    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=32, vocab_size=100, padding_multiple=64, latent_attention=True)
    plain = randomize(GPT(config)).eval()
    model = copy.deepcopy(plain)
    apply_lora(model, SPEC)
    fabric = Fabric(accelerator="cuda", devices=1, plugins=quantization_plugin("bnb.nf4-dq", "bf16-true"))
    model = fabric.setup(model)
    mark_only_lora_as_trainable(model)
    inner = model.transformer.h[0].attn.kv_b_proj.linear
    assert is_quantized(inner.weight) and inner.weight.dtype == torch.uint8 and inner.weight.is_cuda
    idx = torch.randint(0, 100, (2, 10), device="cuda")
    with torch.no_grad():
        got = model(idx).float().cpu()
        full = plain(idx.cpu())
    assert (got - full).norm() < 0.35 * full.norm()
    fabric.backward(model(idx, targets=idx))
    assert all(p.grad is not None for p in lora_parameters(model))
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@needs_bnb_cpu
def test_a_merged_qlora_fine_tune_computes_what_the_unmerged_qlora_model_does(tmp_path):
    """QLoRA's end: LoRA trained over NF4 base weights, then merged (`litgpt merge_lora`) into a base checkpoint that
    holds those NF4 weights dequantized (the base the run computed with). The merged plain model's logits equal the
    unmerged QLoRA model's up to float32 rounding (1e-5: the dequantized weights plus alpha/r B A, summed once
    instead of beside each other), as do those of the base with the LoRA file loaded unmerged, and greedy decoding
    gives the same tokens; the update moves the logits far more than that (the comparison is not vacuous)."""
    import yaml

    from litgpt.checkpoint import load_checkpoint, save_checkpoint, save_config
    from litgpt.generate.base import SamplingParams
    from litgpt.scripts.merge_lora import merge_lora
    from test_generate import argmax_reference, run_generate

    model, quantized, plugin = make_qlora("bnb.nf4")
    dequantized = {n.removesuffix(".linear"): dense_weight(m.weight).clone() for n, m in _linears(quantized).items()}
    idx = torch.randint(0, 100, (2, 10))
    optimizer = torch.optim.AdamW(lora_parameters(quantized), lr=1e-2)
    # the modes the conversion left (the model in eval mode, bitsandbytes' fresh layers in training mode, so that its
    # CPU backend does not repack them for inference, which some of these shapes do not allow; no dropout anywhere)
    modes = {name: m.training for name, m in quantized.named_modules()}
    quantized.train()
    for _ in range(3):  # the fine-tune: LoRA only, over the 4-bit weights
        optimizer.zero_grad()
        quantized(idx, targets=idx.roll(-1, 1)).backward()
        optimizer.step()
    for name, m in quantized.named_modules():
        m.training = modes[name]
    base = GPT(model.config)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k}, strict=True)
    with torch.no_grad():
        for name, module in base.named_modules():
            if name in dequantized:
                module.weight.copy_(dequantized[name])
    base_dir, run_dir = tmp_path / "base", tmp_path / "qlora" / "final"
    save_checkpoint(base, base_dir)
    run_dir.mkdir(parents=True)
    lora = lora_state_dict(quantized)
    torch.save({"model": lora}, run_dir / "lit_model.pth.lora")
    hparams = {"checkpoint_dir": str(base_dir), "precision": "32-true", **SPEC.hyperparameters()}
    (run_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams))
    save_config(model.config, run_dir)
    merge_lora(run_dir)
    merged = load_checkpoint(run_dir).eval()
    unmerged = load_checkpoint(base_dir).eval()
    apply_lora(unmerged, SPEC)
    load_lora_state_dict(unmerged, lora)
    test_idx = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        with plugin.forward_context():
            expected = quantized(test_idx)
        got = merged(test_idx)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unmerged(test_idx), expected, rtol=1e-5, atol=1e-5)
        assert (base.eval()(test_idx) - expected).abs().max() > 0.1  # LoRA's update: far above the tolerance
        prompt = test_idx[0, :5]
        with plugin.forward_context():
            greedy = argmax_reference(quantized, prompt, 10)
    assert argmax_reference(merged, prompt, 10) == greedy
    assert run_generate(merged, [prompt], 10, SamplingParams(0.0))[0] == greedy  # the folded, cached decode
    assert argmax_reference(base, prompt, 10) != greedy


# ---------------------------------------------------------------------------------------------- inference
def _dequantized_checkpoint(checkpoint_dir, mode: str, out_dir):
    """The checkpoint with each weight `quantize_linears` quantizes replaced by its dequantization (what the quantized
    layers multiply by), saved beside copies of the tokenizer files: (its directory, the layers quantized)."""
    import shutil

    import bitsandbytes.functional as bnb_functional

    from litgpt.checkpoint import load_checkpoint, save_checkpoint
    from litgpt.quantize import quantize_linears

    quantized = load_checkpoint(checkpoint_dir)
    names = quantize_linears(quantized, mode)
    reference = load_checkpoint(checkpoint_dir)
    with torch.no_grad():
        for name in names:
            weight = quantized.get_submodule(name).weight
            dense = bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
            target = reference.get_submodule(name).weight
            assert not torch.equal(dense, target)  # quantization changed it
            target.copy_(dense)
    shutil.copytree(checkpoint_dir, out_dir)
    save_checkpoint(reference, out_dir)
    return out_dir, names


@needs_bnb_cpu
@pytest.mark.parametrize("name", ["debug", "debug-mla"])
def test_quantized_generate_is_the_dequantized_models_generate(name, tmp_path, capsys):
    from litgpt.__main__ import main
    from test_generate import make_checkpoint

    checkpoint = make_checkpoint(tmp_path, name)
    reference, names = _dequantized_checkpoint(checkpoint, "bnb.nf4", tmp_path / "dequantized")
    assert "lm_head" not in names and not any(n.endswith("kv_b_proj") for n in names)
    assert any(n.endswith("attn.proj") for n in names) and any(n.endswith("mlp.proj") for n in names)
    args = ["--prompt", "the cat sat", "--max_new_tokens", "12", "--temperature", "0", "--device", "cpu"]
    main(["generate", str(checkpoint), *args, "--quantize", "bnb.nf4"])
    quantized_text = capsys.readouterr().out
    main(["generate", str(reference), *args])
    assert capsys.readouterr().out == quantized_text
    assert len(quantized_text) > len("the cat sat\n")


@needs_bnb_cpu
def test_quantized_chat_replies_as_the_dequantized_model(tmp_path, capsys, monkeypatch):
    import io

    from litgpt.__main__ import main
    from test_generate import make_checkpoint

    checkpoint = make_checkpoint(tmp_path)
    reference, _ = _dequantized_checkpoint(checkpoint, "bnb.nf4", tmp_path / "dequantized")
    replies = []
    for directory, extra in ((checkpoint, ["--quantize", "bnb.nf4"]), (reference, [])):
        monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nand then\n\n"))
        main(["chat", str(directory), "--max_new_tokens", "8", "--temperature", "0", "--device", "cpu", *extra])
        replies.append(capsys.readouterr().out)
    assert replies[0] == replies[1] and replies[0].count(">> Reply: ") == 2


def test_the_cpu_bf16_kernel_serves_only_bfloat16_layers_of_whole_blocks():
    """bitsandbytes' AVX512-BF16 CPU kernel computes in bfloat16 and repacks whole blocks: a float32 model must not
    use it (its text would depart from the dequantized model's), nor a 48-wide input (its repacking fails)."""
    assert cpu_bf16_kernel_applies(nn.Linear(64, 32), torch.bfloat16)
    assert not cpu_bf16_kernel_applies(nn.Linear(64, 32), torch.float32)
    assert not cpu_bf16_kernel_applies(nn.Linear(48, 32), torch.bfloat16)
    assert not cpu_bf16_kernel_applies(nn.Linear(64, 48), torch.bfloat16)


@needs_bnb_cpu
@pytest.mark.parametrize("mode", ["bnb.nf4-dq", "bnb.fp4", "bnb.int8"])
def test_other_inference_modes_store_quantized_weights_and_generate(mode, tmp_path):
    from litgpt.api import LLM
    from test_generate import make_checkpoint

    checkpoint = make_checkpoint(tmp_path, "debug")
    full = LLM.load(checkpoint, device="cpu")
    llm = LLM.load(checkpoint, distribute=None)
    llm.distribute(accelerator="cpu", quantize=mode)
    weight = llm.model.transformer.h[0].attn.qkv.weight
    assert is_quantized(weight) and weight.dtype == (torch.int8 if mode == "bnb.int8" else torch.uint8)
    assert not is_quantized(llm.model.lm_head.weight)
    idx = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        ours, reference = llm.model(idx), full.model(idx)
    # quantization moves the logits a little, not a lot (random weights: a loose bound)
    assert (ours - reference).abs().mean() < 0.25 * reference.abs().mean()
    assert isinstance(llm.generate("the cat", max_new_tokens=6, temperature=0), str)


@pytest.mark.parametrize(
    "mode, message",
    [
        ("bnb.int8-training", "--quantize 'bnb.int8-training' is not a quantization mode for inference "
                              "(bnb.int8-training is for fine-tuning; use bnb.int8); choose one of bnb.nf4, "
                              "bnb.nf4-dq, bnb.fp4, bnb.fp4-dq, bnb.int8"),
        ("gptq", "--quantize 'gptq' is not a quantization mode for inference; choose one of bnb.nf4, bnb.nf4-dq, "
                 "bnb.fp4, bnb.fp4-dq, bnb.int8"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_bad_inference_quantize_is_one_line(command, mode, message, tmp_path, capsys):
    from litgpt.__main__ import main

    with pytest.raises(SystemExit) as info:
        main([command, str(tmp_path / "never-loaded"), "--quantize", mode])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"litgpt: error: {message}\n"
