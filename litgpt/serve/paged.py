"""The page pool of the paged KV cache, as host bookkeeping: which pages are free, who holds which, which full pages
hold a known prefix (prefix caching), and the block tables that tell the model's attention where a row's tokens are.

A page holds `page_size` consecutive positions of one sequence (in every layer's pool on the device). Page 0 is a
scratch page the pool never hands out: idle rows of the decode batch write there. Pages are reference counted: a
page may be held by several sequences that share a prompt prefix, and returns to the free list when the last holder
lets go. A full page whose tokens are known is registered under a key of all token ids up to its end; a later
sequence with the same tokens takes it instead of recomputing them. Freed pages keep their key (and content) until
they are handed out again, least recently freed first, so a prefix often outlives the sequences that made it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Optional, Sequence

import torch

PrefixKey = bytes  # SHA-256 of every token id up to a page's end


def page_keys(token_ids: Sequence[int], page_size: int, num_pages: int, parent: Optional[PrefixKey] = None,
              first_page: int = 0) -> list[PrefixKey]:
    """The prefix keys of full pages first_page .. first_page + num_pages - 1 of token_ids, chained from `parent`
    (the key of page first_page - 1; None for the first page): key = SHA-256(parent key | the page's ids).

    A chain of a cryptographic hash, so a key names all ids up to the page's end without storing them, and no
    client can craft a prompt whose pages collide with another's (a plain 64-bit hash could be forced to)."""
    keys, key = [], b"" if parent is None else parent
    for page in range(first_page, first_page + num_pages):
        ids = array("q", token_ids[page * page_size : (page + 1) * page_size])
        key = hashlib.sha256(key + ids.tobytes()).digest()
        keys.append(key)
    return keys


class PagePool:
    """`num_pages` pages of `page_size` tokens; page 0 is reserved scratch, so `num_pages - 1` can be handed out.

    allocate/free count references; `match_prefix` takes (and references) the cached pages of a token prefix;
    `register` records a full page's prefix key. Not thread-safe: one thread (the engine's loop) owns it.
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 2:
            raise ValueError(f"the page pool needs at least 2 pages (page 0 is scratch), got {num_pages}; give the "
                             "KV cache more memory (kv_cache_gib)")
        if page_size < 1:
            raise ValueError(f"page_size must be a positive number of tokens, got {page_size}")
        self.num_pages, self.page_size = num_pages, page_size
        self._refs = [0] * num_pages
        # free pages in the order they are handed out: pages without a key first, then keyed ones least recently
        # freed first (a cached prefix is evicted as late as possible)
        self._free: OrderedDict[int, None] = OrderedDict((page, None) for page in range(1, num_pages))
        self._key_of: dict[int, PrefixKey] = {}  # page -> its prefix key
        self._page_of: dict[PrefixKey, int] = {}  # prefix key -> page

    @property
    def capacity(self) -> int:
        """Pages that can be handed out (all but the scratch page)."""
        return self.num_pages - 1

    @property
    def free_pages(self) -> int:
        """Pages no sequence holds (cached prefixes among them: they are taken back when needed)."""
        return len(self._free)

    @property
    def cached_pages(self) -> int:
        """Pages registered under a prefix key, held or free."""
        return len(self._page_of)

    def refs(self, page: int) -> int:
        return self._refs[page]

    def pages_for(self, num_tokens: int) -> int:
        """Pages that hold num_tokens positions."""
        return -(-num_tokens // self.page_size)

    def allocate(self, n: int) -> Optional[list[int]]:
        """n fresh pages with one reference each, or None (nothing taken) when fewer than n are free. A page that
        held a cached prefix loses its key."""
        if n > len(self._free):
            return None
        pages = []
        for _ in range(n):
            page, _ = self._free.popitem(last=False)
            key = self._key_of.pop(page, None)
            if key is not None:
                del self._page_of[key]
            self._refs[page] = 1
            pages.append(page)
        return pages

    def free(self, pages: Sequence[int]) -> None:
        """Drop one reference to each page; a page nobody holds any more becomes free (keeping its prefix key).
        The pages of a sequence are freed last page first, so its prefix's later pages are evicted before earlier
        ones (an earlier page serves more prefixes)."""
        for page in reversed(pages):
            if page <= 0 or self._refs[page] <= 0:
                raise ValueError(f"page {page} is not held; a sequence's pages may be freed only once")
            self._refs[page] -= 1
            if self._refs[page] == 0:
                self._free[page] = None
                if page not in self._key_of:
                    self._free.move_to_end(page, last=False)  # no prefix to keep: hand it out first

    def match_prefix(self, keys: Sequence[PrefixKey]) -> list[int]:
        """The cached pages of the longest run of `keys` (page keys from the first page on), each with one more
        reference (taken out of the free list if nobody held it)."""
        pages = []
        for key in keys:
            page = self._page_of.get(key)
            if page is None:
                break
            if self._refs[page] == 0:
                del self._free[page]
            self._refs[page] += 1
            pages.append(page)
        return pages

    def register(self, page: int, key: PrefixKey) -> bool:
        """Record that held page `page` is full with the tokens `key` names. False (nothing recorded) when another
        page already holds that prefix or this page already has a key."""
        if self._refs[page] <= 0:
            raise ValueError(f"page {page} is not held; only a held, full page can be registered")
        if key in self._page_of or page in self._key_of:
            return False
        self._page_of[key] = page
        self._key_of[page] = key
        return True


class BlockTables:
    """Each row's pages, as one (max_batch, max_pages) int32 device tensor read by the model's paged attention,
    mirrored from a host copy. Rows not set are all 0: the scratch page. `sync` copies the host table to the
    device when it changed, into the same device tensor (a captured decode step keeps reading it)."""

    def __init__(self, max_batch: int, max_pages: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.host = torch.zeros(max_batch, max_pages, dtype=torch.int32, pin_memory=pin)  # (max_batch, max_pages)
        self.device = torch.zeros(max_batch, max_pages, dtype=torch.int32, device=device)
        self.max_pages = max_pages
        self._lengths = [0] * max_batch  # pages written into each host row
        self._dirty = False

    def assign(self, row: int, pages: Sequence[int]) -> None:
        """Row `row` reads `pages`. A row's pages only grow until it is cleared, so only the new ones are written:
        clear a row before another sequence takes it."""
        n = len(pages)
        if n > self.max_pages:
            raise ValueError(f"a sequence of {n} pages does not fit a block table of {self.max_pages} pages")
        start = self._lengths[row]
        if start > n:
            self.clear(row)
            start = 0
        if start < n:
            self.host[row, start:n] = torch.tensor(pages[start:], dtype=torch.int32)
            self._lengths[row] = n
            self._dirty = True

    def clear(self, row: int) -> None:
        """Row `row` goes idle: all its entries point at the scratch page."""
        if self._lengths[row]:
            self.host[row, : self._lengths[row]] = 0
            self._lengths[row] = 0
            self._dirty = True

    def sync(self) -> torch.Tensor:
        """The device table, brought up to date."""
        if self._dirty:
            self.device.copy_(self.host, non_blocking=True)
            self._dirty = False
        return self.device
