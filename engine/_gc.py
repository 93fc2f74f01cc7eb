"""Garbage-collector settings for a process with a large job table."""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("engine")

# Allocations minus deallocations between young-generation collections;
# CPython's default is 700.
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Make full garbage collections cheaper and rarer; call once, after start-up.

    A full collection walks every tracked object while every task waits. A
    running job owns about 32 of them (its actor's task, coroutines and
    cancel scopes), so with 7,000 jobs in flight a full collection takes
    about 45 ms on a 2-core Xeon. This function changes two things for the
    whole process:

    - It freezes what start-up built (modules, routes, schemas: about 64,000
      objects in the HTTP server, 20-25 ms of every full collection), which
      exempts them from all later collections. They live until the process
      ends anyway.
    - It raises the young-generation threshold from 700 to
      ``YOUNG_GENERATION_THRESHOLD``, which makes the collections of every
      generation, full ones included, about 14 times rarer. A young
      collection then takes about 1.5 ms. Cyclic garbage waits longer to be
      freed; objects without cycles are freed at once as before.

    The pause of each full collection still grows with the jobs in flight.
    Blocks for one full collection; not a checkpoint.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
    logger.info("garbage collector tuned: %d start-up objects frozen", gc.get_freeze_count())
