"""Tests of ``JobClient.submit_idempotent``: one job per idempotency key while it is retained.

A repeated key with an equal fingerprint returns the existing job and
``created=False``; a different fingerprint raises ``IdempotencyConflict``.
The key is forgotten with its job, on expiry or eviction.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_supervisor import PartialSource, started_supervisor, wait_until_finished

from engine import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    IdempotencyConflict,
    JobSnapshot,
    JobStatus,
    Overloaded,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

KEY = "order-4711"
FINGERPRINT = (70_000, None)
TTL_SECONDS = 60.0
FIXED_DELAY = {"download_delay_min_ms": 10_000, "download_delay_max_ms": 10_000}


async def test_repeated_key_returns_same_job(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        first, first_created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=FINGERPRINT
        )
        second, second_created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=FINGERPRINT
        )
        stats = await client.stats()
        end = await wait_until_finished(client, first.job_id)

    assert first_created
    assert not second_created
    assert second.job_id == first.job_id
    assert stats.jobs == 1
    assert end.status is JobStatus.DONE


async def test_repeated_key_returns_current_snapshot(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
        done = await wait_until_finished(client, first.job_id)
        again, created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=FINGERPRINT
        )

    assert first.status is JobStatus.QUEUED
    assert done.status is JobStatus.DONE
    assert not created
    assert again == done


async def test_key_with_other_fingerprint_conflicts(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
        with pytest.raises(
            IdempotencyConflict, match=r"was used for a different request"
        ) as raised:
            await client.submit_idempotent(2, idempotency_key=KEY, fingerprint=(70_001, None))
        stats = await client.stats()
        end = await wait_until_finished(client, first.job_id)

    assert raised.value.key == KEY
    assert raised.value.job_id == first.job_id
    assert stats.jobs == 1
    assert end.status is JobStatus.DONE


async def test_different_keys_give_different_jobs(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key="a", fingerprint=FINGERPRINT)
        second, created = await client.submit_idempotent(
            1, idempotency_key="b", fingerprint=FINGERPRINT
        )
        ends = [await wait_until_finished(client, job.job_id) for job in (first, second)]

    assert created
    assert second.job_id != first.job_id
    assert [end.status for end in ends] == [JobStatus.DONE] * 2


async def test_same_key_of_two_owners_gives_two_jobs(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(
            1, idempotency_key=KEY, idempotency_owner="192.0.2.1", fingerprint=FINGERPRINT
        )
        other, other_created = await client.submit_idempotent(
            2, idempotency_key=KEY, idempotency_owner="192.0.2.2", fingerprint=(70_001, None)
        )
        again, again_created = await client.submit_idempotent(
            1, idempotency_key=KEY, idempotency_owner="192.0.2.1", fingerprint=FINGERPRINT
        )
        ends = [await wait_until_finished(client, job.job_id) for job in (first, other)]

    assert other_created
    assert other.job_id != first.job_id
    assert not again_created
    assert again.job_id == first.job_id
    assert [end.status for end in ends] == [JobStatus.DONE] * 2


async def test_key_at_length_limit_accepted(autojump_clock, settings):
    key = "k" * MAX_IDEMPOTENCY_KEY_LENGTH
    async with started_supervisor(settings) as client:
        submitted, created = await client.submit_idempotent(
            1, idempotency_key=key, fingerprint=FINGERPRINT
        )
        end = await wait_until_finished(client, submitted.job_id)

    assert MAX_IDEMPOTENCY_KEY_LENGTH == 255
    assert created
    assert end.status is JobStatus.DONE


async def test_key_over_length_limit_rejected(autojump_clock, settings):
    key = "k" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)
    async with started_supervisor(settings) as client:
        with pytest.raises(ValueError, match=r"^idempotency key is longer than 255 characters$"):
            await client.submit_idempotent(1, idempotency_key=key, fingerprint=FINGERPRINT)
        stats = await client.stats()

    assert stats.jobs == 0


async def test_concurrent_repeats_create_one_job(autojump_clock, settings):
    replies: list[tuple[JobSnapshot, bool]] = []
    async with started_supervisor(settings) as client:

        async def submit() -> None:
            replies.append(
                await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(submit)
        stats = await client.stats()
        end = await wait_until_finished(client, replies[0][0].job_id)

    assert len(replies) == 20
    assert len({snapshot.job_id for snapshot, _ in replies}) == 1
    assert [created for _, created in replies].count(True) == 1
    assert stats.jobs == 1
    assert end.status is JobStatus.DONE


async def test_repeated_key_ignores_full_queue(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1, max_queued_jobs=0)
    async with started_supervisor(settings, PartialSource()) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded):
            await client.submit(2)
        again, created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=FINGERPRINT
        )
        end = await client.cancel(first.job_id)

    assert not created
    assert again.job_id == first.job_id
    assert end.status is JobStatus.CANCELLED


async def test_key_reusable_after_expiry(autojump_clock, make_settings):
    settings = make_settings(job_ttl_ms=60_000, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
        first_end = await wait_until_finished(client, first.job_id)
        await trio.sleep(TTL_SECONDS)
        second, created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=FINGERPRINT
        )
        second_end = await wait_until_finished(client, second.job_id)

    assert first_end.status is JobStatus.DONE
    assert created
    assert second.job_id != first.job_id
    assert second_end.status is JobStatus.DONE


async def test_key_reusable_after_eviction(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1, max_retained_jobs=1, **FIXED_DELAY)
    async with started_supervisor(settings) as client:
        first, _ = await client.submit_idempotent(1, idempotency_key=KEY, fingerprint=FINGERPRINT)
        first_end = await wait_until_finished(client, first.job_id)
        second = await client.submit(2)  # evicts the first job
        second_end = await wait_until_finished(client, second.job_id)
        third, created = await client.submit_idempotent(
            1, idempotency_key=KEY, fingerprint=(70_001, None)
        )
        third_end = await wait_until_finished(client, third.job_id)

    assert first_end.status is JobStatus.DONE
    assert second_end.status is JobStatus.DONE
    assert created
    assert third.job_id != first.job_id
    assert third_end.status is JobStatus.DONE
