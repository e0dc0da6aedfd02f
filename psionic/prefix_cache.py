"""The prefix cache: keys and values of prompt prefixes, kept after a prefill for later prompts.

A chat model's prompts often start the same way: the system message (with the tools a tool
loop renders into it), or a conversation's earlier turns, which the next turn sends again.
After a prompt's prefill its keys and values are kept here; a later prompt that starts with
the same tokens copies them into its own cache and prefills only the rest. Both ways into the
model use it: ``Engine.generate_ids`` (one sequence: tools, grammars) and the decode batch's
``join`` (psionic/batch.py), which copies the hit into the joining sequence's slot.

Blocks, not whole prompts. A prompt is cut into blocks of ``block`` tokens (32); the cache is
a trie of blocks: an entry is one block's keys and values, keyed by its parent entry and its
own token ids, so an entry stands for the whole prefix up to its end and one prefix is kept
once, however many prompts share it. A look-up walks the prompt's blocks from the start and
stops at the first one not kept; a prompt's last token is never taken from the cache (its
logits are needed), so at most its full blocks before that token are. A prompt that shares
only part of a block with a kept one recomputes that block: up to ``block - 1`` tokens.

Only prompt tokens are kept, as the prefill computed them, never the decoded ones: a
conversation's next turn reuses the previous prompt and recomputes the previous answer.

Bounded memory. Every entry holds the same number of bytes (both tensors of one block, all
layers); entries are added only while their total fits ``budget_bytes``, evicting the least
recently used first. A look-up or a store marks a prompt's chain used from its deepest entry
up to its first, so a parent is always more recently used than its children and eviction
takes leaves first; an entry that is evicted anyway takes its descendants with it. An evicted
prefix is simply computed again by the next prompt that needs it.

Not thread-safe: the model's worker thread owns it; ``stats`` may be read from elsewhere.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from psionic.model import KVCache

DEFAULT_BLOCK = 32
DEFAULT_BUDGET_MB = 256

_Key = tuple[int, tuple[int, ...]]  # (parent entry's id, 0 for the root; the block's tokens)


@dataclass
class _Entry:
    id: int
    key: _Key
    parent: _Key | None
    k: torch.Tensor  # (layers, kv_heads, block, head_dim)
    v: torch.Tensor
    children: set[_Key] = field(default_factory=set)


class PrefixCache:
    """Blocks of prompt keys and values, LRU within ``budget_bytes`` (0 keeps nothing)."""

    def __init__(self, budget_bytes: int, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least one token")
        self.budget_bytes = max(0, budget_bytes)
        self.block = block
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()  # least recently used first
        self._next_id = 1
        self.bytes = 0
        self.lookups = 0
        self.hits = 0  # look-ups that reused at least one token
        self.lookup_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # of those, served from the cache

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the figures stay)."""
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, Any]:
        """The figures ``/api/status`` shows (docs/psionic.md)."""
        looked_up = self.lookup_tokens
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "budget_bytes": self.budget_bytes,
            "block_tokens": self.block,
            "lookups": self.lookups,
            "hits": self.hits,
            "lookup_tokens": looked_up,
            "hit_tokens": self.hit_tokens,
            "hit_rate": round(self.hit_tokens / looked_up, 4) if looked_up else 0.0,
        }

    def load(self, prompt: Sequence[int], cache: KVCache) -> int:
        """Copy the kept keys and values of ``prompt``'s longest kept prefix (all but its last
        token at most) into slot 0 of ``cache``; return how many tokens that is."""
        chain = self._chain(prompt, (len(prompt) - 1) // self.block)
        b = self.block
        for i, entry in enumerate(chain):
            cache.k[:, 0, :, i * b : (i + 1) * b] = entry.k
            cache.v[:, 0, :, i * b : (i + 1) * b] = entry.v
        self._touch(chain)
        reused = len(chain) * b
        self.lookups += 1
        self.lookup_tokens += len(prompt)
        self.hits += 1 if reused else 0
        self.hit_tokens += reused
        return reused

    def store(self, prompt: Sequence[int], cache: KVCache) -> None:
        """Keep the full blocks of ``prompt``, whose keys and values fill slot 0 of ``cache``
        (its prefill is done), as far as the budget allows."""
        b = self.block
        blocks = len(prompt) // b
        chain = self._chain(prompt, blocks)
        self._touch(chain)
        keep = {entry.key for entry in chain}
        for i in range(len(chain), blocks):
            k = cache.k[:, 0, :, i * b : (i + 1) * b]
            v = cache.v[:, 0, :, i * b : (i + 1) * b]
            size = 2 * k.numel() * k.element_size()
            if not self._make_room(size, keep):
                break
            parent = chain[-1] if chain else None
            key = self._key(prompt, i, chain)
            entry = _Entry(self._next_id, key, parent.key if parent else None, k.clone(), v.clone())
            self._next_id += 1
            self._entries[key] = entry
            if parent is not None:
                parent.children.add(key)
            self.bytes += size
            chain.append(entry)
            keep.add(key)
        self._touch(chain)

    def _key(self, prompt: Sequence[int], i: int, chain: list[_Entry]) -> _Key:
        parent_id = chain[i - 1].id if i else 0
        return (parent_id, tuple(prompt[i * self.block : (i + 1) * self.block]))

    def _chain(self, prompt: Sequence[int], blocks: int) -> list[_Entry]:
        """The kept entries of ``prompt``'s first ``blocks`` blocks, up to the first missing."""
        chain: list[_Entry] = []
        for i in range(blocks):
            entry = self._entries.get(self._key(prompt, i, chain))
            if entry is None:
                break
            chain.append(entry)
        return chain

    def _touch(self, chain: list[_Entry]) -> None:
        """Mark a chain used, deepest first, so that each parent is more recent."""
        for entry in reversed(chain):
            self._entries.move_to_end(entry.key)

    def _make_room(self, size: int, keep: set[_Key]) -> bool:
        """Evict least recently used entries (never those in ``keep``) until ``size`` more
        bytes fit the budget; False when they cannot."""
        if size > self.budget_bytes:
            return False
        while self.bytes + size > self.budget_bytes:
            victim = next(iter(self._entries))
            if victim in keep:
                return False
            self._evict(victim)
        return True

    def _evict(self, key: _Key) -> None:
        entry = self._entries.pop(key)
        self.bytes -= 2 * entry.k.numel() * entry.k.element_size()
        parent = self._entries.get(entry.parent) if entry.parent is not None else None
        if parent is not None:
            parent.children.discard(key)
        for child in list(entry.children):
            if child in self._entries:
                self._evict(child)
