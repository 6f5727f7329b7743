"""Paged KV caches: bytes per token, the paged forward against the static-cache one (float64, pages out of order,
rows of different lengths, chunked prefill, a prefix shared by two rows, idle rows on the scratch page), the decode
step compiled over a block table, and the Triton paged kernels (interpreter on CPU; the GPU where there is one)
against the torch path."""

import pytest
import torch

import litgpt.kernels.decode_attention as dispatch
from litgpt import GPT, Config
from litgpt.fold import fold_for_decode
from litgpt.generate.base import DecodeStep, Sampler, SamplingParams
from litgpt.kernels import (
    gather_pages,
    gqa_cache_write,
    gqa_decode_attention,
    gqa_decode_attention_reference,
    mla_cache_write,
    mla_decode_attention,
    mla_decode_attention_reference,
    set_kernels,
    write_pages,
)
from litgpt.kv_cache import (
    KVCache,
    KVCacheCompressed,
    PagedKVCache,
    PagedKVCacheCompressed,
    kv_cache_bytes_per_token,
)
from litgpt.rope import build_rope_cache

from test_kernels import (
    MLA_DIMS,
    SMALL_TILES,
    assert_rope_close,
    interpreted_copy,
    interpreter_gate,
    poisoned_empty,
    randomize,
    rel_error,
    route_to_interpreted,
)
from test_model import make

PAGE = 4  # tokens per page in the model tests: prompts and prefixes span several pages, some part-filled


# ---------------------------------------------------------------- sizes

def test_kv_cache_bytes_per_token_by_hand():
    """pythia-160m-mla: 12 layers x (256 + 32) values x 2 bytes = 6,912 in bf16; pythia-160m: 12 x 2 x 12 heads x 64
    x 2 = 36,864; its GQA (3 groups) and MQA variants 9,216 and 3,072; float32 doubles each."""
    expected = {"pythia-160m-mla": 6_912, "pythia-160m": 36_864, "pythia-160m-gqa": 9_216, "pythia-160m-mqa": 3_072}
    for name, n_bytes in expected.items():
        config = Config.from_name(name)
        assert kv_cache_bytes_per_token(config, torch.bfloat16) == n_bytes
        assert kv_cache_bytes_per_token(config, torch.float32) == 2 * n_bytes


@pytest.mark.parametrize("case", ["mla", "gqa"])
def test_paged_pool_holds_exactly_its_pages(case):
    """set_paged_kv_cache gives every layer one pool of num_pages x page_size tokens (kv_cache_bytes_per_token each),
    of the paged class for the attention kind; clear_kv_cache removes it."""
    model = make(case)
    model.set_paged_kv_cache(num_pages=7, page_size=PAGE, dtype=torch.bfloat16)
    assert model.kv_cache_bytes() == 7 * PAGE * kv_cache_bytes_per_token(model.config, torch.bfloat16)
    cache = model.transformer.h[0].attn.kv_cache
    c = model.config
    if case == "mla":
        assert isinstance(cache, PagedKVCacheCompressed) and cache.kv.shape == (7, PAGE, c.mla.cache_width)
    else:
        assert isinstance(cache, PagedKVCache) and cache.k.shape == cache.v.shape == (7, PAGE, 2, c.head_size)
    model.clear_kv_cache()
    assert model.kv_cache_bytes() == 0


# ---------------------------------------------------------------- the paged forward against the static one

def static_logits(model: GPT, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """One row alone in a static cache: its prompt (one call), then each later token one at a time. Returns the
    logits after the prompt and after each decoded token (len(ids) - n_prompt + 1, V)."""
    model.set_kv_cache(1, max_seq_length=len(ids))
    logits = [model(ids[None, :n_prompt], input_pos=torch.arange(n_prompt))[0, -1]]
    for p in range(n_prompt, len(ids)):
        logits.append(model(ids[None, p : p + 1], input_pos=torch.tensor([[p]]))[0, -1])
    model.clear_kv_cache()
    return torch.stack(logits)


def prefill_chunks(model: GPT, ids: torch.Tensor, start: int, chunks: tuple[int, ...], table: torch.Tensor):
    """Write ids[start:] into one row's pages, chunk by chunk, after its first `start` cached positions; returns the
    last chunk's last logits (V,)."""
    assert start + sum(chunks) == len(ids)
    for n in chunks:
        pos = torch.arange(start, start + n, device=ids.device).view(1, n)  # (1, n)
        logits = model(ids[None, start : start + n], input_pos=pos, block_table=table[None],
                       input_pos_maxp1=start + n)
        start += n
    return logits[0, -1]


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("case", ["mla", "mla-noqlora-interleaved", "mha", "gqa"])
def test_paged_decode_equals_static_decode_float64(case, folded):
    """Three rows in one pool, its pages handed out in a random order: row A's prompt (11 tokens) prefilled in two
    chunks; row B shares A's first two pages (8 tokens: the same physical pages, read by both, never rewritten)
    and prefills only its own 5 tokens after them, in chunks of 2 and 3; row C (6 tokens) in chunks of 1 and 5.
    Then 5 steps decode all rows in one call, an idle row (table all page 0, position 0) among them. Every
    logit equals the same row decoded alone in a static cache to 1e-9."""
    torch.manual_seed(0)
    model = make(case, torch.float64)
    if folded:
        fold_for_decode(model)
    steps, V = 5, model.config.padded_vocab_size
    a = torch.randint(0, 100, (11 + steps,))
    b = torch.cat((a[:8], torch.randint(0, 100, (5 + steps,))))
    c = torch.randint(0, 100, (6 + steps,))
    rows = [(a, 11), (b, 13), (c, 6)]
    with torch.no_grad():
        expected = [static_logits(model, ids, n) for ids, n in rows]  # (steps + 1, V) each

        model.set_paged_kv_cache(num_pages=20, page_size=PAGE)
        pages = (torch.randperm(19) + 1).tolist()  # every page but the scratch page 0, out of order
        table = torch.zeros(4, 5, dtype=torch.int32)  # decode rows: A, idle, B, C; 5 pages each at most
        table[0, :4] = torch.tensor(pages[:4])  # A: 16 tokens
        table[2, :2] = table[0, :2]  # B: A's first two pages, then its own three (18 tokens)
        table[2, 2:5] = torch.tensor(pages[4:7])
        table[3, :3] = torch.tensor(pages[7:10])  # C: 11 tokens
        first = {0: prefill_chunks(model, a[:11], 0, (5, 6), table[0])}
        pool = model.transformer.h[0].attn.kv_cache
        pool_tensor = pool.kv if case.startswith("mla") else pool.k
        shared = pool_tensor[table[0, :2].long()].clone()  # A's prefix pages, as A's prefill left them
        first[2] = prefill_chunks(model, b[:13], 8, (2, 3), table[2])
        first[3] = prefill_chunks(model, c[:6], 0, (1, 5), table[3])
        for row, expect in zip((0, 2, 3), expected):
            assert (first[row] - expect[0]).abs().max() < 1e-9

        for step in range(steps):
            tokens = torch.stack((a[11 + step], torch.tensor(0), b[13 + step], c[6 + step])).view(4, 1)
            positions = torch.tensor([[11 + step], [0], [13 + step], [6 + step]])  # (4, 1): the idle row at 0
            logits = model(tokens, input_pos=positions, block_table=table)  # (4, 1, V)
            assert logits.shape == (4, 1, V)
            for row, expect in zip((0, 2, 3), expected):
                assert (logits[row, 0] - expect[step + 1]).abs().max() < 1e-9
        assert torch.equal(pool_tensor[table[0, :2].long()], shared)  # B and the decode steps never wrote them


@pytest.mark.parametrize("case", ["mla", "gqa"])
def test_idle_rows_leave_the_other_rows_alone(case):
    """A decode step of two rows alone, and the same step with idle rows (table all page 0, position 0) before,
    between and after them: the same logits for the two rows (to 1e-12 in float64), and the same pools except the
    scratch page."""
    torch.manual_seed(1)
    model = make(case, torch.float64)
    model.set_paged_kv_cache(num_pages=9, page_size=PAGE)
    table = torch.tensor([[3, 7, 1], [5, 2, 8]], dtype=torch.int32)
    with torch.no_grad():
        for row, n in enumerate((9, 5)):
            prefill_chunks(model, torch.randint(0, 100, (n,)), 0, (n,), table[row])
        pools = [b.clone() for b in model.buffers() if b.dim() >= 3]
        tokens, positions = torch.tensor([[17], [42]]), torch.tensor([[9], [5]])
        alone = model(tokens, input_pos=positions, block_table=table)
        after_alone = [b.clone() for b in model.buffers() if b.dim() >= 3]
        for buffer, before in zip((b for b in model.buffers() if b.dim() >= 3), pools):
            buffer.copy_(before)
        idle = torch.zeros(1, 3, dtype=torch.int32)
        mixed_table = torch.cat((idle, table[:1], idle, table[1:], idle))
        mixed = model(torch.tensor([[5], [17], [6], [42], [7]]), input_pos=torch.tensor([[0], [9], [0], [5], [0]]),
                      block_table=mixed_table)
    assert (mixed[[1, 3]] - alone).abs().max() < 1e-12
    for buffer, expected in zip((b for b in model.buffers() if b.dim() >= 3), after_alone):
        # only page 0 (scratch) may differ; the other pages by float64 rounding at most (a batch of 5 rows runs
        # its matmuls in other blocks than a batch of 2)
        assert (buffer[1:] - expected[1:]).abs().max() < 1e-12


def test_paged_forward_refuses_a_missing_or_misplaced_block_table():
    model = make("mla")
    model.set_paged_kv_cache(num_pages=4, page_size=PAGE)
    idx, pos = torch.tensor([[1, 2]]), torch.tensor([[0, 1]])
    with pytest.raises(TypeError, match="the KV cache is paged: pass block_table="):
        model(idx, input_pos=pos)
    with pytest.raises(ValueError, match=r"block_table must be integer page ids of shape \(1, pages\)"):
        model(idx, input_pos=pos, block_table=torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="holds page 4, outside the pool's 4 pages"):
        model(idx, input_pos=pos, block_table=torch.tensor([[4]], dtype=torch.int32))
    with pytest.raises(ValueError, match="input_pos 4 is outside the KV cache of 4 positions .* more pages"):
        model(idx, input_pos=pos + 3, block_table=torch.tensor([[1]], dtype=torch.int32))
    with pytest.raises(ValueError, match="at least 2 pages"):
        model.set_paged_kv_cache(num_pages=1, page_size=PAGE)
    model.set_kv_cache(1, max_seq_length=8)
    with pytest.raises(TypeError, match="the model's cache is static: call model.set_paged_kv_cache"):
        model(idx, input_pos=pos, block_table=torch.tensor([[1]], dtype=torch.int32))


@pytest.mark.parametrize("case", ["mla", "gqa"])
def test_compiled_decode_step_over_a_block_table_matches_static_greedy(case):
    """The folded decode step compiled (fullgraph, one graph for every step: dynamo raises on a recompile) over a
    paged cache, its block table changing between steps as pages are added: greedy tokens of two rows of different
    lengths (and an idle row) equal each row's static-cache greedy decode."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(2)
    model = make(case, torch.float64)
    fold_for_decode(model)
    prompts, steps = [torch.randint(0, 100, (7,)), torch.randint(0, 100, (3,))], 6
    sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 1, torch.device("cpu"))
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            model.set_kv_cache(1, max_seq_length=len(prompt) + steps)
            step = DecodeStep(model, sampler)
            token = sampler(model(prompt[None], input_pos=torch.arange(len(prompt)))[:, -1], torch.tensor([[0]]))
            row = [token.item()]
            for p in range(len(prompt), len(prompt) + steps - 1):
                token = step(token, torch.tensor([[p]]))
                row.append(token.item())
            expected.append(row)
        model.clear_kv_cache()

        model.set_paged_kv_cache(num_pages=8, page_size=PAGE)
        table = torch.zeros(3, 4, dtype=torch.int32)  # rows 0 and 2 decode, row 1 idle
        table[0, :3], table[2, :1] = torch.tensor([6, 2, 5]), torch.tensor([4])  # row 0: 12 positions
        first = [sampler(prefill_chunks(model, prompt, 0, (len(prompt),), table[row])[None], torch.tensor([[0]]))
                 for prompt, row in zip(prompts, (0, 2))]
        batch_sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 3, torch.device("cpu"))
        step = DecodeStep(model, batch_sampler)
        step.compile(backend="eager", fullgraph=True, dynamic=False)
        tokens = torch.cat((first[0], torch.zeros(1, 1, dtype=torch.int64), first[1]))  # (3, 1)
        active = torch.tensor([[1], [0], [1]])  # the idle row stays at position 0
        got = [[first[0].item()], [first[1].item()]]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for s in range(steps - 1):
                if s == 1:
                    table[2, 1] = 3  # row 2 crosses into its second page at position 4: a new page, same shapes
                tokens = step(tokens, torch.tensor([[7], [0], [3]]) + active * s, table) * active  # idle: token 0
                got[0].append(tokens[0].item())
                got[1].append(tokens[2].item())
    torch._dynamo.reset()
    assert got == expected


# ---------------------------------------------------------------- torch path pieces

def test_write_pages_and_gather_pages_address_page_and_slot():
    """Position p of row b lives at pool[block_table[b, p // page_size], p % page_size]; gather_pages reads each
    row's pages back in table order (all of them, or the first `length` positions)."""
    pool = torch.zeros(6, 3, 2)
    table = torch.tensor([[4, 1], [2, 5]], dtype=torch.int32)
    values = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2) + 1
    write_pages(pool, table, torch.tensor([[0, 1, 2, 3], [1, 2, 3, 5]]), values)
    assert torch.equal(pool[4, :3], values[0, :3]) and torch.equal(pool[1, 0], values[0, 3])
    assert torch.equal(pool[2, 1:], values[1, :2]) and torch.equal(pool[5, 0], values[1, 2])
    assert torch.equal(pool[5, 2], values[1, 3])
    assert pool[[0, 3]].abs().sum() == 0 and pool[2, 0].abs().sum() == 0
    rows = gather_pages(pool, table)  # (2, 6, 2)
    assert torch.equal(rows[0, :4], values[0]) and torch.equal(rows[1, [1, 2, 3, 5]], values[1])
    assert torch.equal(gather_pages(pool, table, length=2), rows[:, :2])


# ---------------------------------------------------------------- Triton paged kernels, interpreted

@pytest.fixture(scope="module")
def interpreted_module():
    return interpreted_copy("triton_decode")


@pytest.fixture
def paged_launches(interpreted_module, monkeypatch) -> list:
    """Route the paged operators (attention and both cache writes) to the interpreted launchers on CPU tensors for
    this test; returns the list that records every launch."""
    return route_to_interpreted(monkeypatch, interpreted_module, "triton_decode", dispatch,
                                ("_paged_decode_attention_op", "_paged_mla_cache_write_op",
                                 "_paged_gqa_cache_write_op"), interpreter_gate)


def page_layout(lengths: list[int], page_size: int, n_pages_per_row: int, seed: int) -> torch.Tensor:
    """A block table (B, P): each row with a length gets ceil(length / page_size) pages of a random permutation
    (never page 0), its other entries 0; a row of length 0 is idle (all page 0)."""
    generator = torch.Generator().manual_seed(seed)
    free = (torch.randperm(len(lengths) * n_pages_per_row, generator=generator) + 1).tolist()
    table = torch.zeros(len(lengths), n_pages_per_row, dtype=torch.int32)
    for row, n in enumerate(lengths):
        used = -(-n // page_size)
        table[row, :used] = torch.tensor(free[:used], dtype=torch.int32)
        free = free[used:]
    return table


PAGED_ATTENTION_CASES = [  # (cache, heads, groups, T, page_size, pages per row, d (MLA: d_c), d_R or d_v, lengths
    # of each row's valid tokens (0: an idle row at position 0), tiles (None: default), KV splits the plan takes)
    ("mla", 4, 1, 1, 16, 5, 64, 16, [70, 0, 33], None, 2),  # 64-key tiles over 4 pages each; 2 splits merged
    ("mla", 3, 1, 2, 8, 4, 48, 16, [29, 12], SMALL_TILES, 2),  # q_len 2, a latent of 48 (masked lanes)
    ("gqa", 6, 2, 2, 8, 6, 32, 16, [45, 9], SMALL_TILES, 3),  # GQA, values narrower than keys, 2 pages per tile
    ("gqa", 2, 2, 1, 16, 3, 48, 48, [40, 0, 17], None, 1),  # MHA, one split, an idle row
]


@pytest.mark.parametrize("cache, H, G, T, page_size, P, d, d_last, lengths, tiles, splits", PAGED_ATTENTION_CASES)
def test_paged_decode_kernel_matches_reference_interpreted(paged_launches, interpreted_module, monkeypatch, cache, H,
                                                          G, T, page_size, P, d, d_last, lengths, tiles, splits):
    """The split-KV kernel with its PAGED switch (Triton interpreter, float16) walks each row's pages through the
    block table and equals the float32 torch reference (which gathers them): pages out of order, rows of different
    lengths, an idle row on the scratch page. Every pool entry a row may not read is NaN, so a wrong page or slot
    shows; the output starts as NaN, so an unwritten element shows."""
    if tiles is not None:
        monkeypatch.setattr(interpreted_module, "default_config", lambda *_: interpreted_module.LaunchConfig(**tiles))
    plans = []
    plan = interpreted_module.split_plan
    monkeypatch.setattr(interpreted_module, "split_plan", lambda *args: plans.append(plan(*args)) or plans[-1])
    torch.manual_seed(P + H)
    B, dtype = len(lengths), torch.float16
    table = page_layout(lengths, page_size, P, seed=H)
    n_pages = B * P + 1
    input_pos = torch.tensor([[max(n - T + t, 0) for t in range(T)] for n in lengths])  # (B, T); idle rows at 0
    valid = torch.zeros(n_pages, page_size, dtype=torch.bool)  # pool entries some row may read
    valid[0, 0] = True  # the idle rows' one key
    for row, n in enumerate(lengths):
        for p in range(n):
            valid[table[row, p // page_size], p % page_size] = True
    if cache == "mla":
        q = torch.randn(B, H, T, d + d_last, dtype=dtype)
        pool = torch.randn(n_pages, page_size, d + d_last, dtype=dtype)
        ref = mla_decode_attention_reference(q.float(), pool.float(), input_pos, d, 0.07, table)  # (B, H, T, d_c)
        pool[~valid] = float("nan")
        run = lambda: mla_decode_attention(q, pool, input_pos, d, 0.07, table)  # noqa: E731
        width = d
    else:
        q = torch.randn(B, H, T, d, dtype=dtype)
        k, v = torch.randn(n_pages, page_size, G, d, dtype=dtype), torch.randn(n_pages, page_size, G, d_last,
                                                                                 dtype=dtype)
        ref = gqa_decode_attention_reference(q.float(), k.float(), v.float(), input_pos, 0.125, table)
        k[~valid], v[~valid] = float("nan"), float("nan")
        run = lambda: gqa_decode_attention(q, k, v, input_pos, 0.125, table)  # noqa: E731
        width = d_last
    with poisoned_empty():
        out = run()
    assert paged_launches == ["_paged_decode_attention_op"], "the paged kernel path did not run"
    assert plans[-1][1] == splits
    assert out.shape == (B, H, T, width) and out.dtype == dtype and not out.isnan().any()
    assert rel_error(out, ref) < 1e-3


@pytest.mark.parametrize("cache", ["mla", "gqa"])
def test_paged_cache_write_kernels_match_torch_path_interpreted(paged_launches, cache):
    """The fused cache writes with their PAGED switch (Triton interpreter, float32) put each row's new entry at its
    page and slot as the torch path (`write_pages`) does, rope the query the same way, and leave every other pool
    entry alone: an idle row writes the scratch page's slot 0, and a position past its row's pages writes nothing."""
    torch.manual_seed(3)
    B, page_size, P, dtype = 4, 4, 3, torch.float32
    table = page_layout([9, 0, 5, 12], page_size, P, seed=3)
    input_pos = torch.tensor([[8], [0], [4], [12]])  # row 3: past its 3 pages of 4 (the torch path would raise)
    written = [(table[0, 2], 0), (0, 0), (table[2, 1], 0)]  # (page, slot) of rows 0, 1 (idle) and 2
    cos_table, sin_table = build_rope_cache(16, 16)
    cos, sin = cos_table[input_pos], sin_table[input_pos]  # (B, 1, 16)
    n_pages = B * P + 1
    if cache == "mla":
        h, d_c, d_r = 3, 32, 16
        kv_a = torch.randn(B, 1, d_c + d_r, dtype=dtype) * 3
        query = torch.randn(B, 1, h, d_c + d_r, dtype=dtype).transpose(1, 2)  # (B, h, 1, D), as the model passes it
        gain = 1 + 0.2 * torch.randn(d_c)
        pools = [torch.randn(n_pages, page_size, d_c + d_r, dtype=dtype)]
        expected = [pools[0].clone()]
        q_torch = mla_cache_write(kv_a[:3], expected[0], input_pos[:3], cos[:3], sin[:3], gain, 1e-5, False,
                                  query[:3], use_kernel=False, block_table=table[:3])
        write = lambda: mla_cache_write(kv_a, pools[0], input_pos, cos, sin, gain, 1e-5, False,  # noqa: E731
                                        query, block_table=table)
    else:
        nh, ng, hs = 4, 2, 16
        qkv = torch.randn(B, 1, (nh + 2 * ng) * hs, dtype=dtype)
        pools = [torch.randn(n_pages, page_size, ng, hs, dtype=dtype) for _ in range(2)]
        expected = [pool.clone() for pool in pools]
        q_torch = gqa_cache_write(qkv[:3], *expected, input_pos[:3], cos[:3], sin[:3], nh, hs, False,
                                  use_kernel=False, block_table=table[:3])
        write = lambda: gqa_cache_write(qkv, *pools, input_pos, cos, sin, nh, hs, False,  # noqa: E731
                                        block_table=table)
    before = [pool.clone() for pool in pools]
    with poisoned_empty():
        q = write()
    assert paged_launches == [f"_paged_{cache}_cache_write_op"], "the paged kernel path did not run"
    assert not q.isnan().any()
    assert_rope_close(q[:3], q_torch, q_torch)
    for pool, want, old in zip(pools, expected, before):
        torch.testing.assert_close(pool, want, atol=1e-6, rtol=1e-6)
        changed = (pool != old).flatten(2).any(-1)  # (pages, slots)
        assert sorted(changed.nonzero().tolist()) == sorted([int(page), slot] for page, slot in written)


# ---------------------------------------------------------------- GPU: the compiled kernels

def scatter_to_pages(rows: torch.Tensor, page_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Static rows (B, S, ...) -> a pool (1 + B * S / page_size, page_size, ...) with each row's pages at random
    page ids (page 0 left zero) and the block table (B, S / page_size) that finds them."""
    B, S = rows.shape[:2]
    P = S // page_size
    generator = torch.Generator().manual_seed(seed)
    table = (torch.randperm(B * P, generator=generator) + 1).view(B, P).to(device=rows.device, dtype=torch.int32)
    pool = rows.new_zeros(1 + B * P, page_size, *rows.shape[2:])
    pool[table.long()] = rows.view(B, P, page_size, *rows.shape[2:])
    return pool, table


@pytest.mark.cuda
@pytest.mark.parametrize("cache", ["mla", "gqa"])
@pytest.mark.parametrize("page_size", [16, 64])
def test_paged_decode_kernel_equals_the_static_kernel_on_gpu(cache, page_size):
    """bf16 on the GPU: the same entries in static rows and scattered over pages out of order; the paged kernel's
    output equals the static kernel's bit for bit (the same tiles in the same order) at batch 8 with rows of very
    different lengths."""
    B, S, H = 8, 1024, 16
    lengths = torch.tensor([1024, 1, 300, 17, 999, 64, 65, 512], device="cuda")
    input_pos = (lengths - 1).view(B, 1)
    if cache == "mla":
        q = torch.randn(B, H, 1, 288, device="cuda", dtype=torch.bfloat16)
        kv = torch.randn(B, S, 288, device="cuda", dtype=torch.bfloat16)
        pool, table = scatter_to_pages(kv, page_size, seed=page_size)
        static = mla_decode_attention(q, kv, input_pos, 256, 0.06)
        paged = mla_decode_attention(q, pool, input_pos, 256, 0.06, table)
    else:
        q = torch.randn(B, H, 1, 64, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, 4, S, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        k_pool, table = scatter_to_pages(k.transpose(1, 2).contiguous(), page_size, seed=page_size)
        v_pool, _ = scatter_to_pages(v.transpose(1, 2).contiguous(), page_size, seed=page_size)
        static = gqa_decode_attention(q, k, v, input_pos, 0.125)
        paged = gqa_decode_attention(q, k_pool, v_pool, input_pos, 0.125, table)
    assert torch.equal(paged, static)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["mla", "gqa"])
def test_paged_decode_step_replays_as_a_cuda_graph(case, monkeypatch):
    """A bf16 model on the GPU with a paged cache: the folded decode step captured as one CUDA graph (DecodeStep
    "cuda_graph", the block table copied in before each replay) gives the eager step's greedy tokens, on the same
    paged kernels, for rows of different lengths with an idle row among them."""
    torch.manual_seed(4)
    config = Config.from_name("debug", block_size=128, n_embd=128, **(
        {"latent_attention": {**MLA_DIMS, "q_lora_rank": None, "kv_lora_rank": 64, "qk_rope_head_dim": 16}}
        if case == "mla" else {"n_query_groups": 2}))
    model = randomize(GPT(config)).to(device="cuda", dtype=torch.bfloat16).eval()
    fold_for_decode(model)
    prompts = [torch.randint(0, 100, (n,), device="cuda") for n in (40, 9)]
    steps, page_size = 12, 16
    table = torch.zeros(3, 4, dtype=torch.int32, device="cuda")
    table[0, :4] = torch.tensor([5, 1, 9, 3])
    table[2, :2] = torch.tensor([7, 2])
    launches = []
    for name in ("_paged_decode_attention_op", f"_paged_{case}_cache_write_op"):
        op = getattr(dispatch, name)
        monkeypatch.setattr(dispatch, name, lambda *args, _op=op, _name=name: launches.append(_name) or _op(*args))
    results = {}
    for mode in ("eager", "cuda_graph"):
        model.set_paged_kv_cache(num_pages=12, page_size=page_size)
        sampler = Sampler(SamplingParams(0.0), config.vocab_size, 3, torch.device("cuda"))
        step = DecodeStep(model, sampler, mode)
        with torch.no_grad():
            first = [prefill_chunks(model, p, 0, (len(p),), table[row]).argmax().view(1, 1)
                     for p, row in zip(prompts, (0, 2))]
        tokens = torch.cat((first[0], torch.zeros_like(first[0]), first[1]))  # (3, 1)
        active = torch.tensor([[1], [0], [1]], device="cuda")  # the idle row stays at position 0
        out = []
        launches.clear()
        for s in range(steps):
            tokens = step(tokens, torch.tensor([[40], [0], [9]], device="cuda") + active * s, table) * active
            out.append(tokens.clone())
        results[mode] = torch.cat(out, 1)[[0, 2]]
        if mode == "eager":
            assert len(launches) == 2 * config.n_layer * steps  # every step wrote and attended through the pages
        else:
            assert len(launches) == 2 * config.n_layer * 3  # two warm-ups and the capture; replays launch from C++
    assert torch.equal(results["eager"], results["cuda_graph"])
