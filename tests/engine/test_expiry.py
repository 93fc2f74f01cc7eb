"""Tests of how finished jobs leave the table: expiry, tombstones and eviction.

A finished job is removed ``job_ttl_ms`` after it ends, with its result
file. Its id is then remembered as a tombstone, so lookups raise
``JobExpired``, until ``max_tombstones`` newer removals push it out and
lookups raise plain ``JobNotFound``. When the table contains
``max_retained_jobs``, a submit evicts the job that finished first, and
raises ``Overloaded`` if every job is still in flight.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_supervisor import (
    InstantSource,
    PartialSource,
    result_path,
    started_supervisor,
    wait_until_finished,
)

from engine import (
    JobClient,
    JobExpired,
    JobNotFound,
    JobStatus,
    Overloaded,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

TTL_SECONDS = 60.0
# Fixed 10-second downloads, so every job ends at a known time.
FIXED_DELAY = {"download_delay_min_ms": 10_000, "download_delay_max_ms": 10_000}
POLL_INTERVAL = 0.01


async def time_of_expiry(client: JobClient, job_id: str, *, from_time: float) -> float:
    """Sleep until ``from_time``, then poll every 10 ms until ``status`` raises ``JobExpired``.

    Returns the trio time of the first ``JobExpired``.
    """
    await trio.sleep_until(from_time)
    while True:
        try:
            await client.status(job_id)
        except JobExpired:
            return trio.current_time()
        await trio.sleep(POLL_INTERVAL)


async def lookup_error(client: JobClient, job_id: str) -> type[JobNotFound] | None:
    """Return the class of the error ``status`` raises for ``job_id``, or None if it succeeds."""
    try:
        await client.status(job_id)
    except JobNotFound as exc:
        return type(exc)
    return None


# -- expiry -----------------------------------------------------------------


async def test_finished_job_removed_after_ttl(autojump_clock, make_settings):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        await trio.sleep_until(TTL_SECONDS + 9.9)
        retained = await client.status(submitted.job_id)
        expired_at = await time_of_expiry(client, submitted.job_id, from_time=0)
        stats = await client.stats()

    assert retained.status is JobStatus.DONE
    assert 10 + TTL_SECONDS <= expired_at <= 10 + TTL_SECONDS + 0.1
    assert stats.jobs == 0


async def test_snapshot_shows_expiry_time(autojump_clock, make_settings, wall_clock):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings, wall_clock=wall_clock) as client:
        submitted = await client.submit(1)
        done = await wait_until_finished(client, submitted.job_id)

    assert done.status is JobStatus.DONE
    assert done.expires_at == wall_clock.at(10 + TTL_SECONDS)


@pytest.mark.parametrize("method", ["status", "cancel", "open_result"])
async def test_expired_job_raises_expired(autojump_clock, make_settings, method):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        done = await wait_until_finished(client, submitted.job_id)
        await trio.sleep(TTL_SECONDS)
        with pytest.raises(JobExpired, match=r"^job \S+ expired and was removed$") as raised:
            await getattr(client, method)(submitted.job_id)

    assert done.status is JobStatus.DONE
    assert raised.value.job_id == submitted.job_id


async def test_expiry_deletes_result_file(autojump_clock, make_settings, results_dir):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        done = await wait_until_finished(client, submitted.job_id)
        path = result_path(results_dir, submitted.job_id)
        existed = path.exists()
        await trio.sleep(TTL_SECONDS)
        with pytest.raises(JobExpired):
            await client.status(submitted.job_id)

    assert done.status is JobStatus.DONE
    assert existed
    assert not path.exists()


async def test_cancelled_job_expires(autojump_clock, make_settings):
    settings = make_settings(job_ttl_ms=60_000)
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1)
        await trio.sleep(3)
        cancelled = await client.cancel(submitted.job_id)
        expired_at = await time_of_expiry(client, submitted.job_id, from_time=3 + TTL_SECONDS - 0.5)

    assert cancelled.status is JobStatus.CANCELLED
    assert 3 + TTL_SECONDS <= expired_at <= 3 + TTL_SECONDS + 0.1


async def test_expiry_counted_in_metrics(autojump_clock, make_settings):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(3)]
        ends = [await wait_until_finished(client, job.job_id) for job in jobs]
        await trio.sleep(TTL_SECONDS)
        registry = client.metrics_registry

    assert [end.status for end in ends] == [JobStatus.DONE] * 3
    assert registry.get_sample_value("download_jobs_expired_total") == 3


# -- tombstones -------------------------------------------------------------


async def expire_in_order(client: JobClient, count: int) -> list[str]:
    """Submit ``count`` jobs one second apart, so they end and expire in that order."""
    job_ids = []
    for file_id in range(count):
        job_ids.append((await client.submit(file_id)).job_id)
        await trio.sleep(1)
    return job_ids


async def test_tombstone_outlives_fewer_removals(autojump_clock, make_settings):
    # Jobs end at 10, 11, 12 and 13 s and expire 60 s later. At 72.5 s the
    # first three are gone, so two removals are newer than the first job's.
    settings = make_settings(job_ttl_ms=60_000, max_tombstones=3, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        job_ids = await expire_in_order(client, 4)
        await trio.sleep_until(72.5)
        error = await lookup_error(client, job_ids[0])
        last = await client.status(job_ids[3])
        stats = await client.stats()

    assert error is JobExpired
    assert last.status is JobStatus.DONE
    assert stats.tombstones == 3


async def test_tombstone_forgotten_after_limit(autojump_clock, make_settings):
    # At 73.5 s all four jobs are gone. The three removals after the first
    # job's fill all three tombstones, so the first job's id is forgotten.
    settings = make_settings(job_ttl_ms=60_000, max_tombstones=3, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        job_ids = await expire_in_order(client, 4)
        await trio.sleep_until(73.5)
        first_error = await lookup_error(client, job_ids[0])
        second_error = await lookup_error(client, job_ids[1])
        stats = await client.stats()

    assert first_error is JobNotFound
    assert second_error is JobExpired
    assert stats.tombstones == 3
    assert stats.jobs == 0


async def test_zero_tombstones_forgets_at_once(autojump_clock, make_settings):
    settings = make_settings(job_ttl_ms=60_000, max_tombstones=0, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        done = await wait_until_finished(client, submitted.job_id)
        await trio.sleep(TTL_SECONDS)
        error = await lookup_error(client, submitted.job_id)

    assert done.status is JobStatus.DONE
    assert error is JobNotFound


# -- retained jobs ----------------------------------------------------------


async def test_full_table_evicts_oldest_finished(autojump_clock, make_settings):
    # The jobs end in the order third, first, second, so the third is evicted
    # although it was submitted last.
    settings = make_settings(max_concurrent_jobs=3, max_retained_jobs=3)
    async with started_supervisor(settings, PartialSource()) as client:
        first, second, third = [await client.submit(file_id) for file_id in range(3)]
        for job in (third, first, second):
            await client.cancel(job.job_id)
            await trio.sleep(1)
        fourth = await client.submit(3)
        errors = [await lookup_error(client, job.job_id) for job in (first, second, third)]
        registry = client.metrics_registry
        fourth_end = await client.cancel(fourth.job_id)

    assert errors == [None, None, JobExpired]
    assert registry.get_sample_value("download_jobs_evictions_total") == 1
    assert fourth_end.status is JobStatus.CANCELLED


async def test_eviction_deletes_result_file(autojump_clock, make_settings, results_dir):
    settings = make_settings(max_concurrent_jobs=1, max_retained_jobs=1)
    async with started_supervisor(settings, InstantSource()) as client:
        first = await client.submit(1)
        first_end = await wait_until_finished(client, first.job_id)
        path = result_path(results_dir, first.job_id)
        existed = path.exists()
        second = await client.submit(2)
        second_end = await wait_until_finished(client, second.job_id)

    assert first_end.status is JobStatus.DONE
    assert existed
    assert not path.exists()
    assert second_end.status is JobStatus.DONE


async def test_eviction_spares_jobs_in_flight(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=3, max_retained_jobs=3)
    async with started_supervisor(settings, PartialSource()) as client:
        finished, *in_flight = [await client.submit(file_id) for file_id in range(3)]
        await client.cancel(finished.job_id)
        newest = await client.submit(3)
        await trio.testing.wait_all_tasks_blocked()
        states = [(await client.status(job.job_id)).status for job in [*in_flight, newest]]
        error = await lookup_error(client, finished.job_id)
        ends = [(await client.cancel(job.job_id)).status for job in [*in_flight, newest]]

    assert error is JobExpired
    assert states == [JobStatus.PROCESSING] * 3
    assert ends == [JobStatus.CANCELLED] * 3


async def test_table_of_jobs_in_flight_overloaded(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=3, max_retained_jobs=3)
    async with started_supervisor(settings, PartialSource()) as client:
        jobs = [await client.submit(file_id) for file_id in range(3)]
        before = await client.stats()
        with pytest.raises(
            Overloaded, match=r"^the job table is full: 3 jobs are in flight$"
        ) as raised:
            await client.submit(3)
        after = await client.stats()
        ends = [(await client.cancel(job.job_id)).status for job in jobs]

    assert 1 <= raised.value.retry_after <= 60
    assert after == before
    assert ends == [JobStatus.CANCELLED] * 3


# -- bounds under a burst ---------------------------------------------------


async def test_burst_leaves_nothing_behind(autojump_clock, make_settings, results_dir):
    """100,000 instant jobs of 0-64 bytes end and expire, and the table is empty again.

    Every job starts and ends at virtual time 0 and expires at 1 s. The test
    took 40-47 s of wall time on an idle 2-core machine, and about 86 s on a
    slower one once each result file was written in a worker thread.
    """
    job_count = 100_000
    submitters = 100
    settings = make_settings(
        download_delay_enabled=False,
        download_size_min_bytes=0,
        download_size_max_bytes=64,
        max_concurrent_jobs=job_count,
        max_queued_jobs=job_count,
        max_retained_jobs=job_count,
        max_tombstones=1_000,
        job_ttl_ms=1_000,
    )

    async def submit_share(client: JobClient, first_file_id: int) -> None:
        for file_id in range(first_file_id, job_count, submitters):
            await client.submit(file_id)

    async with started_supervisor(settings) as client:
        async with trio.open_nursery() as nursery:
            for first_file_id in range(submitters):
                nursery.start_soon(submit_share, client, first_file_id)
        await trio.sleep(2)
        stats = await client.stats()
        registry = client.metrics_registry

    assert registry.get_sample_value("download_jobs_finished_total", {"state": "done"}) == job_count
    assert registry.get_sample_value("download_jobs_expired_total") == job_count
    assert stats.jobs == 0
    assert stats.queued == 0
    assert stats.running_actors == 0
    assert stats.tombstones <= settings.max_tombstones
    assert list(results_dir.iterdir()) == []
