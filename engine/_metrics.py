"""Prometheus metrics of one supervisor.

Each supervisor has its own ``CollectorRegistry``, so several supervisors in
one process (tests, benchmarks) never mix their figures. Only the supervisor
task updates these objects; a scrape reads them from any task.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._states import JobStatus

# Job durations from submission to end span 10 ms (immediate downloads) to
# the 300 s default deadline, so the buckets cover that range (seconds).
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 600)


class EngineMetrics:
    """The metric objects the supervisor updates as jobs move."""

    def __init__(self, mailbox_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Gauge(
            "download_jobs_jobs",
            "Jobs in the job table, by state.",
            ["state"],
            registry=self.registry,
        )
        for status in JobStatus:
            self.jobs.labels(state=status.value).set(0)
        self.queue_depth = Gauge(
            "download_jobs_queue_depth", "Jobs waiting queued.", registry=self.registry
        )
        self.in_flight = Gauge(
            "download_jobs_in_flight",
            "Jobs queued or processing.",
            registry=self.registry,
        )
        self.running_actors = Gauge(
            "download_jobs_running_actors",
            "Actor tasks alive, cancelled ones that have not exited included.",
            registry=self.registry,
        )
        self.mailbox_depth = Gauge(
            "download_jobs_supervisor_mailbox_depth",
            "Messages waiting in the supervisor's inbox.",
            registry=self.registry,
        )
        self.mailbox_depth.set_function(mailbox_depth)
        self.submitted = Counter("download_jobs_submitted", "Jobs created.", registry=self.registry)
        self.rejected = Counter(
            "download_jobs_rejected",
            "Start requests rejected for lack of room.",
            ["reason"],
            registry=self.registry,
        )
        self.finished = Counter(
            "download_jobs_finished",
            "Jobs that reached a terminal state, by state.",
            ["state"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "download_jobs_duration_seconds",
            "Time from submission to a terminal state.",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "download_jobs_attempts",
            "Download attempts started, retries included.",
            registry=self.registry,
        )
        self.retries = Counter(
            "download_jobs_retries",
            "Attempts that followed a transient failure.",
            registry=self.registry,
        )
        self.timeouts = Counter(
            "download_jobs_timeouts", "Jobs failed by their deadline.", registry=self.registry
        )
        self.cancellations = Counter(
            "download_jobs_cancellations",
            "Jobs cancelled, on request or by shutdown.",
            registry=self.registry,
        )
        self.expired = Counter(
            "download_jobs_expired",
            "Finished jobs removed after their time to live.",
            registry=self.registry,
        )
        self.evictions = Counter(
            "download_jobs_evictions",
            "Finished jobs removed early to make room for new ones.",
            registry=self.registry,
        )
