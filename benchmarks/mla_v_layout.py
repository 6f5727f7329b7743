"""A/B of MLA's training attention layouts, compiled training step of `litgpt benchmark pretrain`: V padded with
zeros to the query/key width (what SDPA's flash kernel needs), V unpadded (what cuDNN takes; the default where
`litgpt.attention.cudnn_attention_takes`), V as a wider strided view of kv_b_proj's output (no copy). Each argument
is model:layout:compile_mode; profiles and mla_ab.json land in $OUT.

    OUT=/tmp python3 benchmarks/mla_v_layout.py pythia-160m-mla:padded:default pythia-160m-mla:unpadded:default
"""
import json, os, sys
from pathlib import Path
import torch
import lightning as L
import litgpt.attention as attention
from litgpt.attention import MultiheadLatentAttention
from litgpt.benchmark.pretrain import _run
from litgpt.config import Config

default_naive = MultiheadLatentAttention.naive
default_takes = attention.cudnn_attention_takes


def wide_view(self, q_nope, q_rope, kv, mask):
    d, h = self.dims, self.config.n_head
    B, S, _ = kv.shape
    T = q_nope.size(2)
    pad = d.qk_head_dim - d.v_head_dim
    latent, k_rope = kv.split((d.kv_lora_rank, d.qk_rope_head_dim), dim=-1)
    kvb = self.kv_b_proj(latent).view(B, S, h, d.qk_nope_head_dim + d.v_head_dim).transpose(1, 2)
    k_nope, v_wide = kvb[..., : d.qk_nope_head_dim], kvb[..., d.qk_nope_head_dim - pad:]
    k = torch.cat((k_nope, k_rope.unsqueeze(1).expand(B, h, S, d.qk_rope_head_dim)), dim=-1)
    q = torch.cat((q_nope, q_rope), dim=-1)
    y = self.attend(q, k, v_wide, mask, scale=self.scale)[..., pad:]
    return y.transpose(1, 2).reshape(B, T, h * d.v_head_dim)

variants = {  # (naive, cudnn_attention_takes)
    "padded": (default_naive, lambda q, mask: False),
    "unpadded": (default_naive, default_takes),
    "wide_view": (wide_view, default_takes),
}
out = Path(os.environ.get("OUT", "."))
torch.set_float32_matmul_precision("high")
fabric = L.Fabric(devices=1, precision="bf16-mixed")
rows = []
for arg in sys.argv[1:]:
    model_name, name, mode = arg.split(":")
    MultiheadLatentAttention.naive, attention.cudnn_attention_takes = variants[name]
    torch._dynamo.reset()
    r = _run(fabric, Config.from_name(model_name), 16, 1024, True, 5, 20, out / f"profile_{model_name}_{name}_{mode}.txt", mode)
    r["variant"] = name = arg
    print(name, f"{r['tokens_per_sec']:,.0f} tok/s {r['step_ms']:.1f} ms {r['peak_memory_gib']:.2f} GiB loss {r['final_loss']:.4f}", flush=True)
    rows.append(r)
(out / "mla_ab.json").write_text(json.dumps(rows, indent=1))
