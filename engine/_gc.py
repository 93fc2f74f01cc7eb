"""Garbage-collector policy for a process with thousands of long-lived tasks and connections.

CPython 3.11 collects each generation in one pass while every task waits.
A full collection walks every tracked object, at about 0.7 µs each on a
2-core VM. A server with 7,500 open long polls tracks about 180 objects
per poll (its connection, request and job), so a full collection there
stops everything for about 1 s.

By default CPython starts a full collection whenever the objects promoted
into the oldest generation since the last one reach a quarter of that
generation. Under polling load most promoted objects belong to held polls
and requests. They live a few seconds, and reference counting frees them
soon after. So the count grows with the traffic rather than with the
garbage. In one run of the long-poll benchmark, with a young threshold of
10,000, full collections came 25 s apart at 7,500 and 12,500 open long
polls. They paused the server for 0.76 and 1.6 s and freed fewer than 400
objects each.

``manage_garbage_collection`` replaces that rule with one on heap size
and time. A full collection runs when the interpreter's allocated memory
blocks (``sys.getallocatedblocks``) have reached ``FULL_COLLECTION_GROWTH``
times their count after the previous full collection, and at least
``MIN_FULL_COLLECTION_INTERVAL_SECONDS`` after it (or after start-up). So a
heap that stays level is never walked again, and a growing one at most
every 10 minutes. With 10,000 open long polls that is a pause of about
1.3 s (estimated from the figures above) at most every 10 minutes, where
the run above had one every 25 s.

Cyclic garbage that outlives the young collections waits for the next full
collection, so the rule depends on there being little of it. In a test on
127.0.0.1, 9,243 clients over 60 s each connected, started a 0.5 s job,
long-polled it and disconnected: they left 104 objects of it. In another,
5,000 jobs that finished, were cancelled or timed out after 8-15 s left
32. Error responses left more until three cycles were broken: Werkzeug's
routing error (404, 405), the engine client's error replies and h11's
error for a malformed request each referred, through a traceback, to a
frame that referred back to them. The rule bounds what a future cycle
could leave at about the live heap, plus what accumulates in one
interval.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import trio

logger = logging.getLogger("engine")

# A full collection runs once the allocated blocks reach this multiple of
# their count after the previous one, and this long after it.
FULL_COLLECTION_GROWTH = 2.0
MIN_FULL_COLLECTION_INTERVAL_SECONDS = 600.0
# Seconds between checks of the allocated blocks. One check takes about
# 1.5 ms with a 900 MiB heap.
CHECK_INTERVAL_SECONDS = 5.0
# Middle-generation collections between two automatic full collections.
# CPython starts none with a count this high.
NO_AUTOMATIC_FULL_COLLECTIONS = 1_000_000_000


async def manage_garbage_collection(
    *,
    allocated_blocks: Callable[[], int] = sys.getallocatedblocks,
    check_interval: float = CHECK_INTERVAL_SECONDS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run full garbage collections as the heap grows, for the whole process, until cancelled.

    Call once, after start-up. It then:

    - freezes what start-up built (modules, routes, schemas: about 64,000
      objects in the HTTP server), which exempts it from every later
      collection;
    - keeps the young and middle thresholds in force (CPython's defaults,
      700 and 10, keep those collections to a few milliseconds each);
    - turns off automatic full collections, and runs one when
      ``allocated_blocks()`` has reached ``FULL_COLLECTION_GROWTH`` times its
      value after the previous one, at most once per
      ``MIN_FULL_COLLECTION_INTERVAL_SECONDS`` (see the module docstring).

    ``allocated_blocks`` is replaceable for tests. Reports ``started`` once
    the policy is in force. The only checkpoints are the sleeps between
    checks, and a full collection blocks the event loop while it runs.
    Cancellation restores the thresholds that were in force before, and the
    start-up objects stay frozen.
    """
    previous_thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    young, middle, _ = previous_thresholds
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL_COLLECTIONS)
    try:
        baseline = allocated_blocks()
        last_full_collection = trio.current_time()
        logger.info(
            "garbage collector tuned: %d start-up objects frozen, full collections "
            "when the heap doubles from %d blocks, at most every %g s",
            gc.get_freeze_count(),
            baseline,
            MIN_FULL_COLLECTION_INTERVAL_SECONDS,
        )
        task_status.started()
        while True:
            await trio.sleep(check_interval)
            if trio.current_time() - last_full_collection < MIN_FULL_COLLECTION_INTERVAL_SECONDS:
                continue
            blocks = allocated_blocks()
            if blocks >= baseline * FULL_COLLECTION_GROWTH:
                baseline = _collect_fully(blocks, allocated_blocks)
                last_full_collection = trio.current_time()
    finally:
        gc.set_threshold(*previous_thresholds)


def _collect_fully(blocks: int, allocated_blocks: Callable[[], int]) -> int:
    """Run a full collection, log it, and return the allocated blocks left after it."""
    started = time.perf_counter()
    collected = gc.collect()
    pause_ms = (time.perf_counter() - started) * 1000
    remaining = allocated_blocks()
    logger.info(
        "full garbage collection at %d allocated blocks: %d objects collected, "
        "%d blocks left, %.0f ms",
        blocks,
        collected,
        remaining,
        pause_ms,
    )
    return remaining
