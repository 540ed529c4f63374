"""Read ahead: load the next unit of work in a background thread while the current one is decomposed.

Reading a tensor is page faults (or disk reads, for a checkpoint not in the page cache) and, on a GPU,
a host-to-device copy; the kernels release the GIL, so both overlap with the decomposition. One unit
ahead only: memory stays at one extra unit (a mapped view on the CPU, no copy).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def read_ahead(items: Sequence[Item], load: Callable[[Item], Loaded]) -> Iterator[tuple[Item, Callable[[], Loaded]]]:
    """Yield ``(item, get)`` in order; ``get()`` returns ``load(item)`` (raising what it raised), which
    started in the background while the previous item was being worked on."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_spectral_read") as pool:
        pending: Future = pool.submit(load, items[0])
        for position, item in enumerate(items):
            current = pending
            if position + 1 < len(items):
                pending = pool.submit(load, items[position + 1])
            yield item, current.result
            del current  # the loaded tensors go as soon as the caller is done with them
