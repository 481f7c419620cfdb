"""A bounded, uniform sample of a site's feature rows, for its effective rank.

Bottom-k sampling: every row that passes gets an independent uniform key from the site's
own seeded generator, and the sample is the ``capacity`` rows with the smallest keys seen so
far. That is a uniform sample without replacement of everything scanned, its memory is
``capacity x units`` whatever the length of the scan, and two samples merge exactly: the
rows with the smallest keys of both are the sample of the union (the same rule applied to
the combined stream). The keys and positions are drawn on the host with numpy, so the
global RNGs are never touched and an accelerator never waits for the host.

A sample row is one sample's vector of unit values: the row itself for ``(N, F)``; for
``(N, C, *spatial)`` or ``(N, T, F)`` the units at one position of that sample, drawn
uniformly (a random pixel or token), so the cost does not grow with the positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Most rows kept per site (the effective rank is computed on at most this many samples).
SAMPLE_ROWS = 1024


def site_rng(seed: int, index: int, rank: int = 0) -> np.random.Generator:
    """The generator of one site: independent streams per scan seed, site and process."""
    return np.random.default_rng([seed, index, rank])


class Reservoir:
    """Bottom-k sample of the rows of one site, kept on the activation's device."""

    def __init__(
        self,
        units: int,
        unit_dim: int,
        device: torch.device,
        rng: np.random.Generator,
        capacity: int = SAMPLE_ROWS,
    ) -> None:
        self.units = units
        self.unit_dim = unit_dim
        self.capacity = capacity
        self.rng = rng
        self.keys = np.full(capacity, np.inf)  # +inf marks an empty slot
        self.filled = 0  # slots [0, filled) hold rows
        self._journal: list[tuple[np.ndarray, torch.Tensor, np.ndarray, int, np.ndarray]] | None = (
            None
        )
        self._rng_state: Any = None
        # A short scan of a wide layer must not hold 1024 x units floats it does not need.
        # On the host the whole block is reserved at once, uninitialised: the OS commits its
        # pages only as rows are written (no fill, no copies when it grows). An accelerator
        # commits what it allocates, so there the block grows as rows arrive (doubling).
        with torch.inference_mode(False):  # updatable in and out of inference mode
            self.rows = torch.empty(
                capacity if device.type == "cpu" else 0, units, dtype=torch.float32, device=device
            )

    def observe(self, out: torch.Tensor) -> None:
        """Offer every sample of ``out`` (samples in dim 0) to the reservoir."""
        n = out.shape[0]
        if n == 0:
            return
        keys = self.rng.random(n)
        m = self.filled
        if m + n <= self.capacity:  # still filling: every row enters, in order
            take, slots = np.arange(n), np.arange(m, m + n)
        else:
            both = np.concatenate([self.keys[:m], keys])
            keep = np.argpartition(both, self.capacity - 1)[: self.capacity]
            take = np.sort(keep[keep >= m]) - m  # batch rows that enter
            if take.size == 0:
                return
            kept = np.zeros(m, dtype=bool)
            kept[keep[keep < m]] = True
            free = np.concatenate([np.arange(m, self.capacity), np.flatnonzero(~kept)])
            slots = free[: take.size]  # empty slots first, then the evicted ones
        self._reserve(min(m + n, self.capacity))
        if self._journal is not None:  # what a rollback must put back: the evicted rows
            evicted = slots[slots < m]  # (slots past ``filled`` held nothing)
            saved = self.rows[torch.from_numpy(evicted).to(self.rows.device)].clone()
            self._journal.append((evicted, saved, self.keys[slots].copy(), m, slots))
        self.keys[slots] = keys[take]
        self.filled = min(m + n, self.capacity)
        rows = self._rows(out, take).to(torch.float32)
        first = int(slots[0])
        if slots[-1] - first + 1 == slots.size and np.all(np.diff(slots) == 1):
            self.rows[first : first + slots.size].copy_(rows)  # one contiguous block
        else:
            index = torch.from_numpy(slots).to(self.rows.device, non_blocking=True)
            self.rows.index_copy_(0, index, rows)

    def _reserve(self, rows: int) -> None:
        """At least ``rows`` slots, growing by doubling (never past ``capacity``)."""
        have = self.rows.shape[0]
        if rows <= have:
            return
        size = min(max(rows, 2 * have), self.capacity)
        with torch.inference_mode(False):
            grown = torch.empty(size, self.units, dtype=self.rows.dtype, device=self.rows.device)
            grown[:have] = self.rows
        self.rows = grown

    def begin_journal(self) -> None:
        """Remember what the next ``observe`` calls change, so ``rollback`` can undo them
        (a batch that has to be measured again)."""
        self._journal = []
        self._rng_state = self.rng.bit_generator.state

    def rollback(self) -> None:
        """Undo every ``observe`` since ``begin_journal``, the random draws included."""
        assert self._journal is not None
        for evicted, rows, keys, filled, slots in reversed(self._journal):
            if evicted.size:
                self.rows[torch.from_numpy(evicted).to(self.rows.device)] = rows
            self.keys[slots] = keys
            self.filled = filled
        self.rng.bit_generator.state = self._rng_state
        self._journal = None

    def end_journal(self) -> None:
        self._journal = None

    def _rows(self, out: torch.Tensor, take: np.ndarray) -> torch.Tensor:
        """The unit vectors of samples ``take``: at one random position each."""
        view = out.movedim(self.unit_dim, 1)
        if view.ndim == 2 and take.size == view.shape[0]:
            return view  # every row, in order
        samples = torch.from_numpy(take).to(out.device, non_blocking=True)
        if view.ndim == 2:
            return view.index_select(0, samples)
        flat = view.reshape(view.shape[0], view.shape[1], -1)
        where = self.rng.integers(flat.shape[2], size=take.size)
        positions = torch.from_numpy(where).to(out.device, non_blocking=True)
        return flat[samples, :, positions]

    def all_reduce(self, group: Any = None) -> None:
        """Replace this sample by the sample of every rank's rows together."""
        import torch.distributed as dist

        world = dist.get_world_size(group)
        self._reserve(self.capacity)  # every rank gathers tensors of one shape
        keys = torch.from_numpy(self.keys).to(self.rows.device)
        all_keys = [torch.empty_like(keys) for _ in range(world)]
        all_rows = [torch.empty_like(self.rows) for _ in range(world)]
        dist.all_gather(all_keys, keys, group=group)
        dist.all_gather(all_rows, self.rows, group=group)
        merged_keys, merged_rows = bottom_k(
            np.concatenate([k.cpu().numpy() for k in all_keys]),
            torch.cat(all_rows),
            self.capacity,
        )
        self.keys = np.full(self.capacity, np.inf)
        self.keys[: merged_keys.size] = merged_keys
        self.filled = merged_keys.size
        self.rows.zero_()
        self.rows[: merged_keys.size] = merged_rows

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the filled rows and their keys, in slot order."""
        m = self.filled
        return self.rows[:m].cpu().numpy().copy(), self.keys[:m].copy()


def bottom_k(keys: np.ndarray, rows: Any, k: int) -> tuple[np.ndarray, Any]:
    """The ``k`` rows with the smallest finite keys (ordered by key), and their keys."""
    finite = np.flatnonzero(np.isfinite(keys))
    order = finite[np.argsort(keys[finite], kind="stable")][:k]
    if isinstance(rows, torch.Tensor):
        return keys[order], rows[torch.from_numpy(order).to(rows.device)]
    return keys[order], rows[order]


def merge_samples(
    a: tuple[np.ndarray, np.ndarray] | None,
    b: tuple[np.ndarray, np.ndarray] | None,
    capacity: int = SAMPLE_ROWS,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, keys) of two partial scans -> the sample of both (None when either has none:
    a uniform sample of the union needs both sides)."""
    if a is None or b is None:
        return None
    keys, rows = bottom_k(np.concatenate([a[1], b[1]]), np.concatenate([a[0], b[0]]), capacity)
    return rows, keys
