"""Generate reference fixtures from the upstream package (used as an oracle only).

Run with the oracle venv, never with the project's own environment:

    python -m venv .oracle && .oracle/bin/pip install torch==2.13.0 litgpt==0.5.13 && .oracle/bin/python tests/upstream/make_upstream_checkpoints.py

(``tests/upstream/make_venv.sh`` performs the install steps.)

For every case a tiny randomly initialised model is built with the upstream
``Config``/``GPT`` classes and written to ``tests/data/upstream/<case>/``:

* ``lit_model.pth``     -- weights, in one of the layouts upstream itself writes
                           (see ``SAVE_STYLE`` below)
* ``model_config.yaml`` -- written by upstream's own config-saving helper
* ``expected.pt``       -- ``input_ids`` (2, 12), full-sequence ``logits``,
                           ``prefill_logits`` (first 8 tokens through the KV
                           cache) and ``cached_logits`` (tokens 8..11 decoded
                           one at a time through the KV cache)

Nothing in here is imported by the test suite; the tests only read the files.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import torch

import litgpt
from litgpt import GPT, Config
from litgpt.utils import incremental_save, save_config

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "upstream"

SEED = 1234
BATCH, SEQ, PREFILL = 2, 12, 8

_COMMON = dict(block_size=32, n_layer=2)
_LLAMA_LIKE = dict(
    norm_class_name="RMSNorm",
    mlp_class_name="LLaMAMLP",
    parallel_residual=False,
    bias=False,
    rotary_percentage=1.0,
)

CASES: dict[str, dict] = {
    # GPT-NeoX / Pythia flavour, multi-head attention, partial rotary.
    "mha": dict(
        **_COMMON,
        name="tiny-neox-mha",
        n_embd=32,
        n_head=2,
        vocab_size=90,
        padding_multiple=32,  # padded_vocab_size -> 96 (padding rows exist)
        norm_class_name="LayerNorm",
        mlp_class_name="GptNeoxMLP",
        parallel_residual=True,
        bias=True,
        rotary_percentage=0.25,
    ),
    # Llama flavour, grouped-query attention.
    "gqa": dict(
        **_COMMON,
        **_LLAMA_LIKE,
        name="tiny-llama-gqa",
        n_embd=32,
        n_head=4,
        n_query_groups=2,
        intermediate_size=64,
        vocab_size=80,
        padding_multiple=16,
        norm_eps=1e-5,
        rope_base=50000,
    ),
    # Falcon flavour, multi-query attention with a shared attention norm.
    "mqa": dict(
        **_COMMON,
        name="tiny-falcon-mqa",
        n_embd=32,
        n_head=4,
        n_query_groups=1,
        vocab_size=72,
        padding_multiple=8,
        norm_class_name="LayerNorm",
        mlp_class_name="GptNeoxMLP",
        parallel_residual=True,
        shared_attention_norm=True,
        bias=False,
        rotary_percentage=1.0,
    ),
    # Llama base with multi-head latent attention (upstream dict form).
    "mla": dict(
        **_COMMON,
        **_LLAMA_LIKE,
        name="tiny-llama-mla",
        n_embd=32,
        n_head=4,
        intermediate_size=64,
        vocab_size=80,
        padding_multiple=16,
        norm_eps=1e-6,
        latent_attention=dict(
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=8,
            v_head_dim=6,
        ),
    ),
    # Same as "mla" but with the interleaved rope layout switched on.
    "mla_interleave": dict(
        **_COMMON,
        **_LLAMA_LIKE,
        name="tiny-llama-mla-interleave",
        n_embd=32,
        n_head=4,
        intermediate_size=64,
        vocab_size=80,
        padding_multiple=16,
        norm_eps=1e-6,
        rope_interleave=True,
        latent_attention=dict(
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=8,
            v_head_dim=6,
        ),
    ),
}

# No "mla_noqlora" case: upstream 0.5.13 rejects latent_attention with
# q_lora_rank=None (an assertion in Config.__post_init__), and its attention
# module always builds q_a_proj/q_a_norm/q_b_proj.

# How lit_model.pth is written, mirroring what upstream itself produces:
#   "wrapped"     -> {"model": state_dict}  (what the training scripts write via fabric.save)
#   "incremental" -> plain state dict written with upstream's incremental_save
#                    (what the HF conversion script writes)
#   "plain"       -> torch.save(state_dict)  (what the LoRA merge script writes)
SAVE_STYLE = {
    "mha": "wrapped",
    "gqa": "incremental",
    "mqa": "plain",
    "mla": "plain",
    "mla_interleave": "wrapped",
}


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Fill every parameter with non-trivial values (norm scales stay near 1)."""
    norm_types = (torch.nn.LayerNorm, litgpt.model.RMSNorm)
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                if isinstance(module, norm_types) and p_name == "weight":
                    p.copy_(1.0 + 0.15 * noise)
                elif isinstance(module, torch.nn.Embedding):
                    p.copy_(0.2 * noise)
                elif p_name == "bias":
                    p.copy_(0.05 * noise)
                else:
                    p.copy_(0.1 * noise)


def save_weights(state_dict: dict, path: Path, style: str) -> None:
    if style == "wrapped":
        torch.save({"model": state_dict}, path)
    elif style == "plain":
        torch.save(state_dict, path)
    elif style == "incremental":
        with incremental_save(path) as saver:
            saver.save({k: saver.store_early(v) for k, v in state_dict.items()})
    else:
        raise ValueError(style)


@torch.no_grad()
def run_case(case: str, kwargs: dict) -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    config = Config(**kwargs)
    model = GPT(config)
    randomize(model, gen)
    model.eval()

    input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=gen)
    logits = model(input_ids)

    model.set_kv_cache(batch_size=BATCH)
    prefill = model(input_ids[:, :PREFILL], input_pos=torch.arange(PREFILL))
    steps = [
        model(input_ids[:, t : t + 1], input_pos=torch.tensor([t]))
        for t in range(PREFILL, SEQ)
    ]
    cached = torch.cat(steps, dim=1)
    model.clear_kv_cache()

    # the cached path must agree with the plain forward, otherwise the fixture is useless
    torch.testing.assert_close(prefill, logits[:, :PREFILL], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached, logits[:, PREFILL:], rtol=1e-4, atol=1e-5)

    out = OUT_DIR / case
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_weights(sd, out / "lit_model.pth", SAVE_STYLE[case])
    save_config(config, out)
    torch.save(
        {
            "input_ids": input_ids.long(),
            "logits": logits.float(),
            "prefill_logits": prefill.float(),
            "cached_logits": cached.float(),
        },
        out / "expected.pt",
    )
    n_params = sum(v.numel() for v in sd.values())
    print(f"{case:15s} params={n_params:6d} logits={tuple(logits.shape)} save={SAVE_STYLE[case]} "
          f"logit_std={logits.std():.3f}")


def main() -> None:
    print(f"torch {torch.__version__}  upstream litgpt {importlib.metadata.version('litgpt')}")
    selected = sys.argv[1:] or list(CASES)
    for case in selected:
        run_case(case, CASES[case])
    total = sum(f.stat().st_size for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"total fixture size: {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
