"""The page pool (litgpt/serve/paged.py): reference counts, the scratch page, prefix keys and sharing, eviction
order, and the block tables mirrored to the device."""

import pytest
import torch

from litgpt.serve.paged import BlockTables, PagePool, page_keys


def test_allocate_and_free_count_pages_and_never_hand_out_the_scratch_page():
    pool = PagePool(num_pages=5, page_size=4)
    assert pool.capacity == pool.free_pages == 4
    pages = pool.allocate(3)
    assert sorted(pages) == [1, 2, 3] and pool.free_pages == 1
    assert pool.allocate(2) is None and pool.free_pages == 1  # all or nothing
    last = pool.allocate(1)
    assert last == [4] and pool.free_pages == 0 and 0 not in pages + last
    pool.free(pages + last)
    assert pool.free_pages == 4 and all(pool.refs(p) == 0 for p in range(1, 5))
    with pytest.raises(ValueError, match="page 2 is not held"):
        pool.free([2])
    with pytest.raises(ValueError, match="at least 2 pages"):
        PagePool(1, 4)


def test_page_keys_name_every_token_up_to_the_page_end():
    a = page_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], page_size=4, num_pages=2)
    b = page_keys([1, 2, 3, 4, 5, 6, 7, 8], page_size=4, num_pages=2)
    c = page_keys([0, 2, 3, 4, 5, 6, 7, 8], page_size=4, num_pages=2)
    assert a == b  # only full pages: the 9th token is not in a key
    assert a[0] != c[0] and a[1] != c[1]  # the second page's tokens agree, its prefix does not
    assert page_keys([1, 2, 3, 4, 5, 6, 7, 8], 4, 1, parent=a[0], first_page=1) == a[1:]  # the chain continues
    assert len(set(a + c)) == 4


def test_prefix_pages_are_shared_by_reference_count_and_freed_by_the_last_holder():
    pool = PagePool(num_pages=8, page_size=2)
    tokens = [5, 6, 7, 8, 9]
    keys = page_keys(tokens, 2, 2)
    first = pool.allocate(3)
    assert pool.register(first[0], keys[0]) and pool.register(first[1], keys[1])
    assert not pool.register(first[2], keys[0])  # that prefix has its page already
    shared = pool.match_prefix(page_keys([5, 6, 7, 8, 1, 1], 2, 3))  # the third page differs
    assert shared == first[:2] and [pool.refs(p) for p in first] == [2, 2, 1]
    pool.free(first)
    assert pool.free_pages == 4 + 1  # the unshared page is back; the shared ones are still held
    pool.free(shared)
    assert pool.free_pages == pool.capacity and pool.cached_pages == 2  # free, and still cached
    again = pool.match_prefix(keys)  # a freed prefix is taken back from the free list
    assert again == first[:2] and pool.free_pages == pool.capacity - 2
    pool.free(again)


def test_uncached_pages_are_handed_out_before_cached_prefixes_which_are_then_evicted_oldest_first():
    pool = PagePool(num_pages=5, page_size=1)
    pages = pool.allocate(4)
    keys = page_keys([1, 2, 3], 1, 3)
    for page, key in zip(pages, keys):
        pool.register(page, key)
    pool.free(pages)  # the keyless page first in line, then the cached ones, the last page of the prefix first
    assert pool.allocate(1) == [pages[3]] and pool.cached_pages == 3
    assert pool.allocate(1) == [pages[2]] and pool.cached_pages == 2  # evicted: its key is gone
    assert pool.match_prefix(keys) == pages[:2]  # the prefix's first two pages survive


def test_block_tables_mirror_rows_to_the_device_and_idle_rows_read_the_scratch_page():
    tables = BlockTables(max_batch=3, max_pages=4, device=torch.device("cpu"))
    tables.assign(1, [7, 3])
    tables.assign(1, [7, 3, 9])  # grows
    tables.assign(2, [4])
    device = tables.sync()
    assert device.dtype == torch.int32 and device.tolist() == [[0, 0, 0, 0], [7, 3, 9, 0], [4, 0, 0, 0]]
    tables.clear(1)
    assert tables.sync() is device and device.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [4, 0, 0, 0]]
    tables.clear(2)  # its sequence left; a new one takes the row
    tables.assign(2, [5])
    assert tables.sync().tolist()[2] == [5, 0, 0, 0]
    with pytest.raises(ValueError, match="does not fit a block table of 4 pages"):
        tables.assign(0, [1, 2, 3, 4, 5])
