"""KV cache sizes and update semantics."""

import pytest
import torch

from litgpt import GPT, Config
from litgpt.kv_cache import KVCache, KVCacheCompressed
from litgpt.norm import RMSNorm
from litgpt.rope import apply_rope, build_rope_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["debug-mla", "pythia-14m-mla"])
def test_mla_cache_bytes_exact(name, dtype):
    model = GPT.from_name(name, n_layer=3)
    B, S = 2, 40
    model.set_kv_cache(batch_size=B, max_seq_length=S, dtype=dtype)
    c = model.config.mla
    expected = B * S * 3 * (c.kv_lora_rank + c.qk_rope_head_dim) * torch.tensor([], dtype=dtype).element_size()
    assert model.kv_cache_bytes() == expected
    # nothing per-head is ever allocated for MLA
    for block in model.transformer.h:
        assert isinstance(block.attn.kv_cache, KVCacheCompressed)
        assert [tuple(b.shape) for b in block.attn.kv_cache.buffers()] == [(B, S, c.kv_lora_rank + c.qk_rope_head_dim)]


def test_pythia_160m_values_per_token():
    """Values per token per layer: MHA 1,536; -gqa (n_head/4 = 3 groups) 384; MQA 128; our MLA 288."""
    per_token = {n: Config.from_name(n).kv_values_per_token for n in
                 ["pythia-160m", "pythia-160m-gqa", "pythia-160m-mqa", "pythia-160m-mla"]}
    assert per_token == {"pythia-160m": 1536, "pythia-160m-gqa": 384, "pythia-160m-mqa": 128, "pythia-160m-mla": 288}


@pytest.mark.parametrize("name", ["debug", "debug-gqa", "debug-mqa"])
def test_group_cache_bytes(name):
    model = GPT.from_name(name)
    model.set_kv_cache(batch_size=3, max_seq_length=20)
    c = model.config
    assert model.kv_cache_bytes() == 3 * 20 * c.n_layer * 2 * c.n_query_groups * c.head_size * 4


def test_updates_in_place_without_reallocation():
    cache = KVCache(2, 2, 8, 4)
    k_ptr = cache.k.data_ptr()
    k = torch.randn(2, 2, 3, 4)
    full_k, _ = cache(torch.tensor([2, 3, 4]), k, k)
    assert full_k.data_ptr() == k_ptr and full_k.shape == (2, 2, 8, 4)
    torch.testing.assert_close(full_k[:, :, 2:5], k)
    assert full_k[:, :, :2].abs().sum() == 0


def test_compressed_per_row_positions():
    cache = KVCacheCompressed(2, 6, 4, 2)
    latent, rope = torch.randn(2, 1, 4), torch.randn(2, 1, 2)
    latent = latent * torch.rsqrt(latent.pow(2).mean(-1, keepdim=True))  # unit RMS: the cache's norm keeps it
    angle_zero = torch.ones(2, 1, 2), torch.zeros(2, 1, 2)  # rope rows at angle 0: the rotation keeps the key
    kv, _ = cache.write(torch.tensor([[1], [4]]), torch.cat((latent, rope), -1), *angle_zero, RMSNorm(4, eps=0.0), False)
    torch.testing.assert_close(kv[0, 1], torch.cat((latent[0, 0], rope[0, 0])))
    torch.testing.assert_close(kv[1, 4], torch.cat((latent[1, 0], rope[1, 0])))
    assert kv[0, 4].abs().sum() == 0 and kv[1, 1].abs().sum() == 0


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_compressed_write_holds_normed_latent_and_roped_key(interleave, per_row):
    """`write` turns kv_a_proj's output into [kv_a_norm(latent) | rope(k_R)] at the positions, in place, and ropes
    the query's last d_R dims at the same positions; float64 against the modules themselves."""
    torch.manual_seed(0)
    B, T, d_c, d_r, h, S = 2, 3, 8, 4, 3, 10
    cache = KVCacheCompressed(B, S, d_c, d_r, dtype=torch.float64)
    norm = RMSNorm(d_c, eps=1e-6).double()
    norm.weight.data = 1 + 0.3 * torch.randn(d_c, dtype=torch.float64)
    cos_table, sin_table = (t.double() for t in build_rope_cache(S, d_r))
    input_pos = torch.tensor([[2, 3, 4], [6, 7, 8]]) if per_row else torch.tensor([5, 6, 7])
    cos, sin = cos_table[input_pos], sin_table[input_pos]  # (B, T, d_R) or (T, d_R)
    kv_a = torch.randn(B, T, d_c + d_r, dtype=torch.float64) * 3
    query = torch.randn(B, h, T, d_c + d_r, dtype=torch.float64)
    kv, roped = cache.write(input_pos, kv_a, cos, sin, norm, interleave, query)
    assert kv.data_ptr() == cache.kv.data_ptr()
    expected = torch.cat((norm(kv_a[..., :d_c]), apply_rope(kv_a[..., d_c:], cos, sin, interleave)), dim=-1)
    rows = torch.arange(B).view(B, 1)
    positions = input_pos if per_row else input_pos.expand(B, T)
    torch.testing.assert_close(kv[rows, positions], expected, rtol=1e-12, atol=1e-12)
    untouched = torch.ones(B, S, dtype=torch.bool)
    untouched[rows, positions] = False
    assert kv[untouched].abs().sum() == 0
    torch.testing.assert_close(roped[..., :d_c], query[..., :d_c], rtol=0, atol=0)
    torch.testing.assert_close(roped[..., d_c:], apply_rope(query[..., d_c:], cos, sin, interleave), rtol=1e-12,
                               atol=1e-12)
