"""A helper for tests that check what only the cyclic garbage collector would free."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """Run the block with the collector off, then fill the yielded list with its cyclic garbage.

    Collects first, so the list holds only objects that became unreachable
    inside the block and that reference counting did not free: members of
    reference cycles. Restores the collector's state even if the block raises.
    """
    found: list[object] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
