"""Stateful property test of the supervisor: random submits, cancels, failures and time.

Hypothesis drives a ``RuleBasedStateMachine`` against a real ``Supervisor``
and a scripted source whose downloads take drawn times and fail at drawn
points. Each machine runs trio in a background thread on a ``MockClock``
that never jumps by itself, so trio time moves only in the ``advance_time``
rule. That rule steps the clock from one trio deadline to the next up to a
drawn target, so timers fire in the order they would in real time.

After every rule the harness waits until every task in the trio thread is
blocked, reads the whole table, and checks the invariants in
``SupervisorMachine.check_observation``. Between two rules no task can run
and the clock does not move, so the state one observation reads is exactly
the state the next request meets. That lets the test predict the outcome of
every submit and cancel, not only check that the outcome is plausible.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import outcome
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, settings as hypothesis_settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from engine import (
    EngineSettings,
    EngineStats,
    FileUnavailable,
    InvalidTransition,
    JobAlreadyFinished,
    JobClient,
    JobExpired,
    JobNotFound,
    JobSnapshot,
    JobStatus,
    Overloaded,
    ProgressReporter,
    ResultFile,
    ResultInfo,
    ResultNotReady,
    ResultUnavailable,
    SourceError,
    Supervisor,
    TransientSourceError,
)

T = TypeVar("T")

# Small limits, so that the queue cap, the table cap, evictions, deadlines,
# expiry and forgotten tombstones all happen within 40 steps.
MAX_CONCURRENT_JOBS = 3
MAX_QUEUED_JOBS = 3
# Each example draws one table size. Below the 6 jobs that can be in flight
# (3 processing plus 3 queued), a table full of unfinished jobs rejects
# starts. Above it, the queue cap rejects them and finished jobs are evicted.
MAX_RETAINED_JOBS_CHOICES = (5, 8)
# Each example draws one tombstone count. With 0, a removed id reads "not found".
MAX_TOMBSTONES_CHOICES = (0, 4)
JOB_TIMEOUT_SECONDS = 30.0
JOB_TTL_SECONDS = 20.0
MAX_ATTEMPTS = 3

# Real time one request to the trio thread may take. A rule that takes longer
# means some task never blocks, such as a supervisor spinning on a timer.
CALL_TIMEOUT_SECONDS = 20.0
# Timer wake-ups one advance_time rule may step through. A handful of jobs
# needs a few dozen, so reaching this bound means a timer keeps re-arming.
MAX_WAKEUPS_PER_ADVANCE = 1000
# Timestamps are wall-clock values with microsecond resolution, derived from
# float trio times.
TIMESTAMP_TOLERANCE = timedelta(microseconds=10)
# A timeout fires when the clock reaches the job's deadline, give or take
# float rounding of the jumps.
DEADLINE_TOLERANCE = timedelta(milliseconds=1)

WALL_CLOCK_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

# Statuses a job may show in a later observation, given its status now.
REACHABLE_STATUSES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(JobStatus),
    JobStatus.PROCESSING: frozenset(
        {JobStatus.PROCESSING, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.DONE: frozenset({JobStatus.DONE}),
    JobStatus.FAILED: frozenset({JobStatus.FAILED}),
    JobStatus.CANCELLED: frozenset({JobStatus.CANCELLED}),
}


def wall_clock_at(trio_time: float) -> datetime:
    return WALL_CLOCK_EPOCH + timedelta(seconds=trio_time)


def trio_wall_clock() -> datetime:
    """Return ``WALL_CLOCK_EPOCH`` plus the trio time, the supervisor's wall clock here."""
    return wall_clock_at(trio.current_time())


class SupervisorCrashed(AssertionError):
    """The trio run that hosts the supervisor ended with an exception."""


class QueuedDeadlineCrash(SupervisorCrashed):
    """A supervisor crash on the move queued -> failed, which a queued job's deadline causes."""


def is_queued_deadline_crash(error: BaseException | None) -> bool:
    """Return whether ``error`` is, or is a group containing, InvalidTransition(queued, failed)."""
    if isinstance(error, InvalidTransition):
        return error.old is JobStatus.QUEUED and error.new is JobStatus.FAILED
    if isinstance(error, BaseExceptionGroup):
        return any(is_queued_deadline_crash(inner) for inner in error.exceptions)
    return False


# -- scripted source ----------------------------------------------------------


class UpstreamRejected(SourceError):
    code = "upstream_rejected"


# How an attempt ends, and the error code a job gets when its last attempt
# ends that way.
ERROR_CODES = {
    "transient": TransientSourceError.code,
    "not_found": FileUnavailable.code,
    "rejected": UpstreamRejected.code,
    "crash": "internal_error",
}


@dataclasses.dataclass(frozen=True)
class AttemptPlan:
    """What one attempt of a scripted download does."""

    seconds: float  # trio seconds the attempt takes if it succeeds
    ending: str  # "ok" or a key of ERROR_CODES
    fail_at: float  # share of ``seconds`` after which a failing attempt raises
    linear: bool  # declare a linear schedule, or else report 50 % halfway
    partial_write: bool  # write a partial file before waiting


def expected_ending(plans: list[AttemptPlan]) -> tuple[JobStatus, str | None, int]:
    """Return the status, error code and attempt count a job ends with, unless cancelled or
    timed out."""
    for attempt, plan in enumerate(plans[:MAX_ATTEMPTS], start=1):
        if plan.ending == "ok":
            return JobStatus.DONE, None, attempt
        if plan.ending == "transient" and attempt < MAX_ATTEMPTS:
            continue
        return JobStatus.FAILED, ERROR_CODES[plan.ending], attempt
    raise AssertionError(f"a plan needs {MAX_ATTEMPTS} attempts, got {len(plans)}")


def write_now(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` on the trio thread, with no checkpoint.

    ``trio.Path`` would write in a worker thread. The task counts as blocked
    while it waits for that thread, so ``wait_all_tasks_blocked`` could return
    in the middle of a write.
    """
    path.write_bytes(data)


def result_content(file_id: int) -> bytes:
    return f"file {file_id}\n".encode()


def expected_result(file_id: int) -> ResultInfo:
    content = result_content(file_id)
    return ResultInfo(
        size=len(content),
        media_type="text/plain",
        file_name=f"{file_id}.txt",
        sha256=hashlib.sha256(content).hexdigest(),
    )


class ScriptedSource:
    """A source that runs attempt ``n`` of a file as ``plans[file_id][n - 1]`` describes."""

    def __init__(self) -> None:
        self.plans: dict[int, list[AttemptPlan]] = {}
        self.calls: collections.Counter[int] = collections.Counter()

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        plans = self.plans[file_id]
        plan = plans[min(self.calls[file_id], len(plans) - 1)]
        self.calls[file_id] += 1
        if plan.partial_write:
            write_now(destination, b"partial")

        if plan.ending == "ok":
            await self._wait(plan, plan.seconds, progress)
            write_now(destination, result_content(file_id))
            return expected_result(file_id)

        await self._wait(plan, plan.seconds * plan.fail_at, progress)
        match plan.ending:
            case "transient":
                raise TransientSourceError(f"scripted transient failure of file {file_id}")
            case "not_found":
                raise FileUnavailable(file_id)
            case "rejected":
                raise UpstreamRejected(f"scripted rejection of file {file_id}")
            case _:
                raise RuntimeError(f"scripted crash of file {file_id}")

    @staticmethod
    async def _wait(plan: AttemptPlan, seconds: float, progress: ProgressReporter) -> None:
        if plan.linear:
            progress.advance_linearly(trio.current_time(), plan.seconds)
            await trio.sleep(seconds)
            return
        await trio.sleep(seconds / 2)
        progress.set_fraction(0.5)
        await trio.sleep(seconds / 2)

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return len(result_content(file_id))

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


# -- the trio thread ------------------------------------------------------------


class SupervisorThread:
    """A ``Supervisor`` in its own trio run, on a ``MockClock``, in a background thread.

    ``call`` runs a coroutine function in that run and returns its result. It
    waits at most CALL_TIMEOUT_SECONDS of real time, unlike
    ``trio.from_thread.run``, so a task that never blocks fails the test
    instead of hanging it.
    """

    def __init__(self, settings: EngineSettings, source: ScriptedSource) -> None:
        # autojump_threshold defaults to infinity, so the clock moves only by jump().
        self.clock = trio.testing.MockClock()
        self.client: JobClient | None = None
        self.error: BaseException | None = None
        self.crash_reported = False
        self._supervisor = Supervisor(settings, source, wall_clock=trio_wall_clock)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_trio, name="supervisor", daemon=True)
        self._thread.start()
        if not self._ready.wait(CALL_TIMEOUT_SECONDS):
            raise AssertionError(f"the supervisor did not start within {CALL_TIMEOUT_SECONDS} s")
        if self.client is None:
            raise self.crashed() from self.error

    def _run_trio(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # handed to the test thread by call() and stop()
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.client = await nursery.start(self._supervisor.run)
            self._ready.set()
            await self._stop.wait()
            await self.client.shutdown()

    def crashed(self) -> SupervisorCrashed:
        self.crash_reported = True
        message = f"the supervisor's trio run ended with {self.error!r}"
        if is_queued_deadline_crash(self.error):
            return QueuedDeadlineCrash(message)
        return SupervisorCrashed(message)

    def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run ``function()`` in the trio thread, as a system task, and return its result."""
        assert self._token is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run_in_trio() -> None:
            try:
                future.set_result(await function())
            except trio.Cancelled as exc:  # the run is ending
                future.set_exception(exc)
                raise
            except BaseException as exc:  # handed to the test thread
                future.set_exception(exc)

        try:
            self._token.run_sync_soon(trio.lowlevel.spawn_system_task, run_in_trio)
        except trio.RunFinishedError:
            self._thread.join(CALL_TIMEOUT_SECONDS)
            raise self.crashed() from self.error
        try:
            return future.result(timeout=CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            raise AssertionError(
                f"the trio thread did not answer within {CALL_TIMEOUT_SECONDS} s of real time; "
                "some task keeps running without blocking"
            ) from None
        except trio.Cancelled:
            self._thread.join(CALL_TIMEOUT_SECONDS)
            raise self.crashed() from self.error

    def stop(self) -> None:
        """Shut the supervisor down and wait for the thread to end."""
        if self._token is not None and self._stop is not None:
            try:
                self._token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(CALL_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            raise AssertionError(f"the supervisor did not stop within {CALL_TIMEOUT_SECONDS} s")


def count_actor_tasks() -> int:
    """Count the live ``run_actor`` tasks of this trio run by walking the task tree."""
    count = 0
    tasks = [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        code = getattr(task.coro, "cr_code", None)
        if code is not None and code.co_name == "run_actor":
            count += 1
        for nursery in task.child_nurseries:
            tasks.extend(nursery.child_tasks)
    return count


async def advance_clock(
    clock: trio.testing.MockClock,
    target: float,
    before_jump: Callable[[float], Awaitable[bool]] | None = None,
) -> None:
    """Move trio time to ``target``, stopping at every deadline on the way.

    At each stop, every woken task runs until it blocks again before the
    clock moves on, as it would if the time passed for real. Before each
    jump, ``before_jump(next_stop)`` may act on the supervisor. When it
    returns True, the next stop is computed again.
    """
    for _ in range(MAX_WAKEUPS_PER_ADVANCE):
        await trio.testing.wait_all_tasks_blocked()
        now = trio.current_time()
        next_deadline = now + trio.lowlevel.current_statistics().seconds_to_next_deadline
        next_stop = min(next_deadline, target)
        if before_jump is not None and await before_jump(next_stop):
            continue
        clock.jump(max(next_stop - now, 0.0))
        if next_stop >= target:
            await trio.testing.wait_all_tasks_blocked()
            return
    raise AssertionError(
        f"more than {MAX_WAKEUPS_PER_ADVANCE} timer wake-ups before trio time {target}"
    )


@dataclasses.dataclass
class Observation:
    """Everything the harness reads after a rule, at one trio time."""

    now: float
    jobs: dict[str, JobSnapshot]  # from list_jobs, in its order
    stats: EngineStats
    actor_tasks: int
    status_reads: dict[str, outcome.Outcome[JobSnapshot]]
    result_reads: dict[str, outcome.Outcome[ResultFile]]
    files: dict[str, bytes]  # results folder: file name -> content


# -- the state machine ------------------------------------------------------------


@dataclasses.dataclass
class JobRecord:
    """What the test recorded about a job that a submit created."""

    file_id: int
    plans: list[AttemptPlan]
    order: int  # submission order, 0 for the first job
    submitted_at: float  # trio time
    timeout: float  # effective timeout, seconds
    cancel_requested: bool = False
    removed_at_step: int | None = None

    @property
    def deadline(self) -> float:
        return self.submitted_at + self.timeout


SECONDS = st.one_of(st.sampled_from([0.0, 1.0, 5.0, 10.0, 25.0]), st.floats(0.0, 30.0))
ATTEMPT_PLANS = st.builds(
    AttemptPlan,
    seconds=SECONDS,
    ending=st.sampled_from(["ok", "ok", "ok", "transient", "transient", *ERROR_CODES]),
    fail_at=st.floats(0.0, 1.0),
    linear=st.booleans(),
    partial_write=st.booleans(),
)
JOB_PLANS = st.lists(ATTEMPT_PLANS, min_size=MAX_ATTEMPTS, max_size=MAX_ATTEMPTS)
JOB_TIMEOUTS = st.one_of(
    st.none(), st.none(), st.sampled_from([1.0, 5.0, 10.0]), st.floats(0.1, 60.0)
)
TIME_STEPS = st.one_of(st.sampled_from([0.5, 1.0, 5.0, 10.0, 30.0]), st.floats(0.0, 40.0))


class SupervisorMachine(RuleBasedStateMachine):
    """Random submits, cancels and time steps against one supervisor."""

    # When set, advance_time cancels each queued job just before the clock
    # reaches its deadline, as a client that gives up on a stuck job would.
    avoid_queued_deadlines = False

    def __init__(self) -> None:
        super().__init__()
        self.results_dir = Path(tempfile.mkdtemp(prefix="stateful-results-"))
        self.source = ScriptedSource()
        self.jobs: dict[str, JobRecord] = {}  # every job a submit created, by id
        self.next_file_id = 10_000
        self.step = 0
        self.removals_per_step: collections.Counter[int] = collections.Counter()
        self.unknown_ids = [str(uuid.uuid4()), "not-a-job-id"]
        self.healthy = False  # set once the latest rule passed every check
        self._harness: SupervisorThread | None = None

    @property
    def harness(self) -> SupervisorThread:
        assert self._harness is not None, "start_supervisor has not run"
        return self._harness

    @initialize(
        max_retained_jobs=st.sampled_from(MAX_RETAINED_JOBS_CHOICES),
        max_tombstones=st.sampled_from(MAX_TOMBSTONES_CHOICES),
    )
    def start_supervisor(self, max_retained_jobs: int, max_tombstones: int) -> None:
        self.max_retained_jobs = max_retained_jobs
        self.max_tombstones = max_tombstones
        self.settings = EngineSettings(
            max_concurrent_jobs=MAX_CONCURRENT_JOBS,
            max_queued_jobs=MAX_QUEUED_JOBS,
            max_retained_jobs=max_retained_jobs,
            max_tombstones=max_tombstones,
            job_timeout_ms=int(JOB_TIMEOUT_SECONDS * 1000),
            job_ttl_ms=int(JOB_TTL_SECONDS * 1000),
            job_max_attempts=MAX_ATTEMPTS,
            retry_backoff_base_ms=1000,
            retry_backoff_cap_ms=4000,
            download_random_seed=20_260_101,
            progress_step_percent=5,
            results_dir=self.results_dir,
        )
        self._harness = SupervisorThread(self.settings, self.source)
        assert self._harness.client is not None
        self.client: JobClient = self._harness.client
        self.last = self.harness.call(lambda: self.observe({}))
        self.check_observation(self.last, self.last, kind="start")
        self.healthy = True

    # -- rules ------------------------------------------------------------

    @rule(plans=JOB_PLANS, job_timeout=JOB_TIMEOUTS)
    def submit(self, plans: list[AttemptPlan], job_timeout: float | None) -> None:
        self.submit_job(plans, job_timeout)

    @rule(jobs=st.lists(st.tuples(JOB_PLANS, JOB_TIMEOUTS), min_size=2, max_size=5))
    def submit_burst(self, jobs: list[tuple[list[AttemptPlan], float | None]]) -> None:
        """Submit several jobs at one trio time, as a burst of clients would."""
        for plans, job_timeout in jobs:
            self.submit_job(plans, job_timeout)

    def submit_job(self, plans: list[AttemptPlan], job_timeout: float | None) -> None:
        """Submit one job and check the outcome that the last observation predicts."""
        self.healthy = False
        before = self.last
        file_id = self.next_file_id
        self.next_file_id += 1
        self.source.plans[file_id] = plans

        free_slots = max(MAX_CONCURRENT_JOBS - before.stats.running_actors, 0)
        queue_full = before.stats.queued - free_slots >= MAX_QUEUED_JOBS
        table_full = len(before.jobs) >= self.max_retained_jobs
        any_finished = any(snapshot.status.is_terminal for snapshot in before.jobs.values())

        submitted, after = self.run_step(
            lambda: self.client.submit(file_id, job_timeout=job_timeout)
        )

        if queue_full or (table_full and not any_finished):
            event("submit rejected: " + ("queue full" if queue_full else "table full"))
            assert isinstance(submitted, outcome.Error), (
                f"submit was accepted with {before.stats.queued} queued, "
                f"{before.stats.running_actors} processing and {len(before.jobs)} jobs in the table"
            )
            error = submitted.error
            assert isinstance(error, Overloaded), f"submit raised {error!r}, expected Overloaded"
            reason = "the queue is full" if queue_full else "the job table is full"
            assert str(error).startswith(reason), f"{error} does not start with {reason!r}"
            assert 1.0 <= error.retry_after <= 60.0
            self.accept_observation(after, kind="rejected submit")
            return

        assert isinstance(submitted, outcome.Value), (
            f"submit raised {getattr(submitted, 'error', None)!r} with {before.stats.queued} "
            f"queued, {before.stats.running_actors} processing and {len(before.jobs)} jobs"
        )
        snapshot = submitted.value
        event("submit accepted" + (" with eviction" if table_full else ""))
        timeout = (
            JOB_TIMEOUT_SECONDS if job_timeout is None else min(job_timeout, JOB_TIMEOUT_SECONDS)
        )
        assert snapshot.job_id not in self.jobs, f"submit reused job id {snapshot.job_id}"
        assert snapshot.file_id == file_id
        assert snapshot.status is JobStatus.QUEUED
        assert snapshot.progress == 0
        assert snapshot.attempt == 0
        assert snapshot.queue_position is not None and snapshot.queue_position >= 1
        assert snapshot.created_at == wall_clock_at(before.now)
        assert snapshot.deadline_at is not None
        assert (
            abs(snapshot.deadline_at - wall_clock_at(before.now + timeout)) <= TIMESTAMP_TOLERANCE
        )
        self.jobs[snapshot.job_id] = JobRecord(
            file_id=file_id,
            plans=plans,
            order=len(self.jobs),
            submitted_at=before.now,
            timeout=timeout,
        )
        self.accept_observation(after, kind="accepted submit", new_job_id=snapshot.job_id)

    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        self.healthy = False
        # Draw the kind of target first, so that every status present gets picked.
        targets: dict[str, list[str]] = collections.defaultdict(list)
        for job_id in self.jobs:
            snapshot = self.last.jobs.get(job_id)
            targets["removed" if snapshot is None else snapshot.status.value].append(job_id)
        targets["unknown"] = self.unknown_ids
        kind = data.draw(st.sampled_from(sorted(targets)), label="target")
        job_id = data.draw(st.sampled_from(targets[kind]), label="job_id")
        before = self.last.jobs.get(job_id)
        cancelled, after = self.run_step(lambda: self.client.cancel(job_id))

        if job_id not in self.jobs:
            event("cancel of an unknown id")
            assert isinstance(cancelled, outcome.Error), f"cancel of unknown id {job_id} returned"
            assert type(cancelled.error) is JobNotFound, repr(cancelled.error)
        elif before is None:
            event("cancel of a removed job")
            assert isinstance(cancelled, outcome.Error), f"cancel of removed job {job_id} returned"
            self.check_removed_read(job_id, cancelled.error)
        elif before.status in (JobStatus.DONE, JobStatus.FAILED):
            event("cancel of a finished job")
            assert isinstance(cancelled, outcome.Error), f"cancel of {before.status} job returned"
            assert isinstance(cancelled.error, JobAlreadyFinished), repr(cancelled.error)
            assert cancelled.error.snapshot == before
        elif before.status is JobStatus.CANCELLED:
            event("cancel of a cancelled job")
            assert cancelled == outcome.Value(before), "a repeated cancel changed the job"
        else:
            event(f"cancel of a {before.status.value} job")
            self.jobs[job_id].cancel_requested = True
            assert isinstance(cancelled, outcome.Value), f"cancel raised {cancelled!r}"
            snapshot = cancelled.value
            assert snapshot.job_id == job_id
            assert snapshot.status is JobStatus.CANCELLED
            assert snapshot.progress >= before.progress
            assert snapshot.result is None
            assert snapshot.error is None
        self.accept_observation(after, kind="cancel")

    @rule(seconds=TIME_STEPS)
    def advance_time(self, seconds: float) -> None:
        self.healthy = False
        target = self.last.now + seconds
        before_jump = self.cancel_queued_jobs_due if self.avoid_queued_deadlines else None
        advanced, after = self.run_step(
            lambda: advance_clock(self.harness.clock, target, before_jump)
        )
        advanced.unwrap()
        self.accept_observation(after, kind="advance")

    async def cancel_queued_jobs_due(self, next_stop: float) -> bool:
        """Cancel the queued jobs whose deadline is at or before ``next_stop``.

        Runs in the trio thread while the test thread waits. Returns whether
        it cancelled any.
        """
        due = [
            snapshot.job_id
            for snapshot in await self.client.list_jobs()
            if snapshot.status is JobStatus.QUEUED
            and self.jobs[snapshot.job_id].deadline <= next_stop
        ]
        for job_id in due:
            self.jobs[job_id].cancel_requested = True
            cancelled = await self.client.cancel(job_id)
            assert cancelled.status is JobStatus.CANCELLED
        return bool(due)

    def teardown(self) -> None:
        try:
            if self._harness is not None:
                self.check_shutdown(self._harness)
        finally:
            shutil.rmtree(self.results_dir, ignore_errors=True)

    def check_shutdown(self, harness: SupervisorThread) -> None:
        """Stop the supervisor and, unless a check already failed, check what it left behind."""
        harness.stop()
        if harness.error is not None and not harness.crash_reported:
            raise harness.crashed() from harness.error
        if not self.healthy:
            return
        # Shutdown cancels every unfinished job, and its actor deletes its partial file.
        done_files = {
            f"{job_id}.zip"
            for job_id, snapshot in self.last.jobs.items()
            if snapshot.status is JobStatus.DONE
        }
        left = {path.name for path in self.results_dir.iterdir()}
        assert left <= done_files, f"files left after shutdown: {left - done_files}"

    # -- observation ------------------------------------------------------

    def run_step(
        self, action: Callable[[], Awaitable[T]]
    ) -> tuple[outcome.Outcome[T], Observation]:
        """Run ``action`` in the trio thread and observe the state after it, in one round trip."""

        async def act_and_observe() -> tuple[outcome.Outcome[T], Observation]:
            result = await outcome.acapture(action)
            return result, await self.observe(self.last.jobs)

        return self.harness.call(act_and_observe)

    async def observe(self, previous: dict[str, JobSnapshot]) -> Observation:
        """Wait until every task is blocked, then read the table, the stats and the job ids.

        Runs in the trio thread while the test thread waits, so it may read
        the machine's records. To keep a step cheap, it reads status and
        result only where the step can have changed them: jobs that are new
        or changed status since ``previous``, jobs just removed, and unknown
        ids. Ids removed earlier are read again only when a job has just been
        removed, because only a removal changes which ids the tombstones
        remember.
        """
        client = self.client
        await trio.testing.wait_all_tasks_blocked()
        now = trio.current_time()
        actor_tasks = count_actor_tasks()
        listed = await client.list_jobs()
        stats = await client.stats()
        jobs = {snapshot.job_id: snapshot for snapshot in listed}
        assert len(jobs) == len(listed), f"list_jobs returned a job twice: {listed}"

        changed = [
            job_id
            for job_id, snapshot in jobs.items()
            if job_id not in previous or previous[job_id].status is not snapshot.status
        ]
        just_removed = [job_id for job_id in previous if job_id not in jobs]
        ids_to_read = [*changed, *just_removed, *self.unknown_ids]
        if just_removed:
            ids_to_read += [
                job_id for job_id, record in self.jobs.items() if record.removed_at_step is not None
            ]
        status_reads = {
            job_id: await outcome.acapture(client.status, job_id) for job_id in ids_to_read
        }
        result_reads = {
            job_id: await outcome.acapture(client.open_result, job_id) for job_id in changed
        }
        files = {path.name: path.read_bytes() for path in self.results_dir.iterdir()}
        return Observation(now, jobs, stats, actor_tasks, status_reads, result_reads, files)

    def accept_observation(
        self, after: Observation, *, kind: str, new_job_id: str | None = None
    ) -> None:
        """Check the observation that ends a step and make it the latest."""
        self.step += 1
        self.check_observation(self.last, after, kind=kind, new_job_id=new_job_id)
        self.last = after
        self.healthy = True

    def check_observation(
        self,
        before: Observation,
        after: Observation,
        *,
        kind: str,
        new_job_id: str | None = None,
    ) -> None:
        """Check every invariant on ``after``, and every rule about the step from ``before``."""
        if kind != "advance":
            assert after.now == before.now, f"trio time moved during a {kind} step"
        self.check_membership(before, after, kind=kind, new_job_id=new_job_id)
        self.check_stats(after)
        for snapshot in after.jobs.values():
            self.check_job(snapshot, before.jobs.get(snapshot.job_id), after.now)
        self.check_queue_order(after)
        self.check_reads(after)
        self.check_files(after)

    def check_membership(
        self, before: Observation, after: Observation, *, kind: str, new_job_id: str | None
    ) -> None:
        """Check that only a submit adds a job and only expiry or eviction removes one."""
        added = after.jobs.keys() - before.jobs.keys()
        removed = before.jobs.keys() - after.jobs.keys()
        expected_added = set() if new_job_id is None else {new_job_id}
        assert added == expected_added, f"{kind} step added jobs {added - expected_added}"

        for job_id in removed:
            self.jobs[job_id].removed_at_step = self.step
        self.removals_per_step[self.step] = len(removed)

        if kind == "accepted submit" and len(before.jobs) >= self.max_retained_jobs:
            event("job evicted")
            assert len(removed) == 1, f"a submit into a full table removed {len(removed)} jobs"
            (evicted,) = removed
            status = before.jobs[evicted].status
            assert status.is_terminal, f"{status.value} job {evicted} was evicted"
            oldest = min(
                snapshot.updated_at
                for snapshot in before.jobs.values()
                if snapshot.status.is_terminal
            )
            assert before.jobs[evicted].updated_at == oldest, "eviction skipped an older job"
        elif kind == "advance":
            if removed:
                event("job expired")
            for job_id in removed:
                # A job unfinished at the last observation finished after it,
                # so it can only have expired if a whole TTL has passed since.
                expires_at = before.jobs[job_id].expires_at
                if expires_at is None:
                    expires_at = wall_clock_at(before.now + JOB_TTL_SECONDS)
                assert expires_at <= wall_clock_at(after.now) + TIMESTAMP_TOLERANCE, (
                    f"job {job_id} was removed before it expired at {expires_at}"
                )
        else:
            assert not removed, f"{kind} step removed jobs {removed}"

    def check_stats(self, after: Observation) -> None:
        stats = after.stats
        counted = collections.Counter(snapshot.status.value for snapshot in after.jobs.values())
        processing = counted[JobStatus.PROCESSING.value]
        assert stats.by_status == {status.value: counted[status.value] for status in JobStatus}
        assert sum(stats.by_status.values()) == stats.jobs
        assert stats.jobs == len(after.jobs)
        assert stats.queued == counted[JobStatus.QUEUED.value]
        assert stats.running_actors == processing, (
            f"{stats.running_actors} actors counted for {processing} processing jobs"
        )
        assert after.actor_tasks == processing, (
            f"{after.actor_tasks} actor tasks alive for {processing} processing jobs"
        )
        assert stats.jobs <= self.max_retained_jobs
        assert stats.queued <= MAX_QUEUED_JOBS
        assert stats.accepting
        removed_count = sum(self.removals_per_step.values())
        assert stats.tombstones == min(removed_count, self.max_tombstones)

    def check_job(self, snapshot: JobSnapshot, before: JobSnapshot | None, now: float) -> None:
        job_id = snapshot.job_id
        assert job_id in self.jobs, f"the table has job {job_id}, which no submit returned"
        record = self.jobs[job_id]
        assert record.removed_at_step is None, f"removed job {job_id} is back in the table"
        status = snapshot.status
        assert snapshot.file_id == record.file_id
        assert snapshot.created_at == wall_clock_at(record.submitted_at)
        assert 0 <= snapshot.progress <= 100
        assert (snapshot.progress == 100) == (status is JobStatus.DONE), (
            f"{status.value} job {job_id} has progress {snapshot.progress}"
        )
        assert (snapshot.result is not None) == (status is JobStatus.DONE)
        assert (snapshot.error is not None) == (status is JobStatus.FAILED)
        assert (snapshot.queue_position is not None) == (status is JobStatus.QUEUED)
        if status is not JobStatus.PROCESSING:
            assert snapshot.eta_seconds is None
        elif snapshot.eta_seconds is not None:
            assert snapshot.eta_seconds >= 0

        if before is not None:
            assert snapshot.progress >= before.progress, (
                f"progress of job {job_id} fell from {before.progress} to {snapshot.progress}"
            )
            assert status in REACHABLE_STATUSES[before.status], (
                f"job {job_id} went from {before.status.value} to {status.value}"
            )
            if before.status.is_terminal:
                assert snapshot == before, f"finished job {job_id} changed"

        if status is JobStatus.QUEUED:
            assert snapshot.attempt == 0
        elif status is JobStatus.PROCESSING:
            assert 1 <= snapshot.attempt <= MAX_ATTEMPTS

        if not status.is_terminal:
            assert now < record.deadline, (
                f"{status.value} job {job_id} outlived its deadline at trio time {record.deadline}"
            )
            assert snapshot.deadline_at is not None
            assert abs(snapshot.deadline_at - wall_clock_at(record.deadline)) <= TIMESTAMP_TOLERANCE
            assert snapshot.expires_at is None
            return

        assert snapshot.deadline_at is None
        assert snapshot.expires_at == snapshot.updated_at + timedelta(seconds=JOB_TTL_SECONDS)
        assert snapshot.expires_at > wall_clock_at(now) - TIMESTAMP_TOLERANCE, (
            f"job {job_id} is still in the table after it expired at {snapshot.expires_at}"
        )
        self.check_ending(snapshot, record)

    def check_ending(self, snapshot: JobSnapshot, record: JobRecord) -> None:
        """Check that a finished job ended as its plan, its deadline or a cancel request made it."""
        status, code, attempts = expected_ending(record.plans)
        if snapshot.status is JobStatus.CANCELLED:
            assert record.cancel_requested, f"job {snapshot.job_id} was cancelled unasked"
            return
        if snapshot.error is not None and snapshot.error.code == "timeout":
            event("job timed out")
            assert snapshot.updated_at >= wall_clock_at(record.deadline) - DEADLINE_TOLERANCE
            assert snapshot.updated_at <= wall_clock_at(record.deadline) + DEADLINE_TOLERANCE, (
                f"job {snapshot.job_id} timed out at {snapshot.updated_at}, "
                f"not at its deadline {wall_clock_at(record.deadline)}"
            )
            return
        event(f"job ended {snapshot.status.value} on its own")
        assert snapshot.status is status, (
            f"job {snapshot.job_id} ended {snapshot.status.value}, its plan says {status.value}"
        )
        assert snapshot.attempt == attempts
        if status is JobStatus.DONE:
            assert snapshot.result == expected_result(record.file_id)
        else:
            assert snapshot.error is not None
            assert snapshot.error.code == code
            assert snapshot.error.message

    def check_queue_order(self, after: Observation) -> None:
        """Check that queue positions run 1..n in submission order and no later job started."""
        queued = sorted(
            (snapshot for snapshot in after.jobs.values() if snapshot.status is JobStatus.QUEUED),
            key=lambda snapshot: self.jobs[snapshot.job_id].order,
        )
        positions = [snapshot.queue_position for snapshot in queued]
        assert positions == list(range(1, len(queued) + 1)), f"queue positions {positions}"
        if not queued:
            return
        first_waiting = self.jobs[queued[0].job_id].order
        for snapshot in after.jobs.values():
            if self.jobs[snapshot.job_id].order > first_waiting:
                assert snapshot.attempt == 0, (
                    f"job {snapshot.job_id} started before the earlier job {queued[0].job_id}"
                )

    def check_reads(self, after: Observation) -> None:
        """Check that status and result reads match the table and a removed id names no job."""
        for job_id, read in after.status_reads.items():
            if job_id in after.jobs:
                assert read == outcome.Value(after.jobs[job_id]), f"status of {job_id}: {read!r}"
            elif job_id in self.jobs:
                assert isinstance(read, outcome.Error), f"status of removed {job_id}: {read!r}"
                self.check_removed_read(job_id, read.error)
            else:
                assert isinstance(read, outcome.Error), f"status of unknown {job_id}: {read!r}"
                assert type(read.error) is JobNotFound, repr(read.error)

        for job_id, read in after.result_reads.items():
            snapshot = after.jobs[job_id]
            if snapshot.status is JobStatus.DONE:
                assert isinstance(read, outcome.Value), f"result of done {job_id}: {read!r}"
                assert read.value.snapshot == snapshot
                assert read.value.info == snapshot.result
                assert read.value.path == self.results_dir / f"{job_id}.zip"
                continue
            assert isinstance(read, outcome.Error), f"result of {snapshot.status} job: {read!r}"
            expected: type[Exception] = (
                ResultUnavailable if snapshot.status.is_terminal else ResultNotReady
            )
            assert type(read.error) is expected, repr(read.error)
            assert read.error.snapshot == snapshot

    def check_removed_read(self, job_id: str, error: Exception) -> None:
        """Check that a removed id reads JobExpired while among the latest removed ids."""
        removed_at = self.jobs[job_id].removed_at_step
        assert removed_at is not None
        removed_later = sum(
            count for step, count in self.removals_per_step.items() if step > removed_at
        )
        removed_with = self.removals_per_step[removed_at]
        if removed_later + removed_with <= self.max_tombstones:
            assert type(error) is JobExpired, f"recently removed {job_id}: {error!r}"
        elif removed_later >= self.max_tombstones:
            event("tombstone forgotten")
            assert type(error) is JobNotFound, f"long removed {job_id}: {error!r}"
        else:
            assert isinstance(error, JobNotFound), f"removed {job_id}: {error!r}"

    def check_files(self, after: Observation) -> None:
        """Check that every done job has its file and only done and processing jobs have one."""
        allowed = {
            f"{job_id}.zip"
            for job_id, snapshot in after.jobs.items()
            if snapshot.status in (JobStatus.DONE, JobStatus.PROCESSING)
        }
        assert after.files.keys() <= allowed, f"stray files {after.files.keys() - allowed}"
        for job_id, snapshot in after.jobs.items():
            if snapshot.status is JobStatus.DONE:
                content = after.files.get(f"{job_id}.zip")
                assert content == result_content(self.jobs[job_id].file_id)


class NoQueuedDeadlineMachine(SupervisorMachine):
    """The same machine, except that advance_time cancels queued jobs before their deadline."""

    avoid_queued_deadlines = True


# 11 to 20 s of wall time on the 2-core VM these tests were written on, depending on its load.
STATEFUL_SETTINGS = hypothesis_settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Before queued jobs could time out, 200 examples of the full machine found
# that crash in 30 runs out of 30, and 50 examples in 19 out of 20, so 60
# examples keep a real chance of finding a bug of that kind. Shrinking such a
# crash takes Hypothesis past its 5-minute limit, so failures are reported
# unshrunk. test_queued_job_deadline_fails_job is the shrunk form of it.
FULL_MACHINE_SETTINGS = hypothesis_settings(
    STATEFUL_SETTINGS,
    max_examples=60,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)


def test_supervisor_state_machine():
    run_state_machine_as_test(SupervisorMachine, settings=FULL_MACHINE_SETTINGS)


def test_supervisor_state_machine_no_queued_deadlines():
    run_state_machine_as_test(NoQueuedDeadlineMachine, settings=STATEFUL_SETTINGS)


# -- regressions found by the machine ----------------------------------------------


async def test_queued_job_deadline_fails_job(autojump_clock, tmp_path):
    settings = EngineSettings(
        max_concurrent_jobs=1,
        job_timeout_ms=30_000,
        results_dir=tmp_path,
    )
    source = ScriptedSource()
    slow = AttemptPlan(seconds=60.0, ending="ok", fail_at=0.0, linear=True, partial_write=False)
    source.plans[1] = source.plans[2] = [slow] * MAX_ATTEMPTS

    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(Supervisor(settings, source).run)
        await client.submit(1)
        waiting = await client.submit(2, job_timeout=5.0)
        await trio.sleep(6)
        snapshot = await client.status(waiting.job_id)
        await client.shutdown()

    assert snapshot.status is JobStatus.FAILED
    assert snapshot.error is not None
    assert snapshot.error.code == "timeout"
