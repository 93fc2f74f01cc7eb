"""The download-jobs engine: a trio supervisor, its actors and the job model.

It imports nothing from any HTTP library; ``http_api`` translates HTTP into
calls on ``JobClient``.
"""

from ._archive import (
    archive_size as archive_size,
    build_archive as build_archive,
    content_size as content_size,
)
from ._client import (
    MAX_IDEMPOTENCY_KEY_LENGTH as MAX_IDEMPOTENCY_KEY_LENGTH,
    JobClient as JobClient,
)
from ._errors import (
    EngineError as EngineError,
    FileUnavailable as FileUnavailable,
    IdempotencyConflict as IdempotencyConflict,
    JobAlreadyFinished as JobAlreadyFinished,
    JobConflict as JobConflict,
    JobExpired as JobExpired,
    JobNotFound as JobNotFound,
    Overloaded as Overloaded,
    ResultNotReady as ResultNotReady,
    ResultUnavailable as ResultUnavailable,
    SettingsError as SettingsError,
    SourceError as SourceError,
    SupervisorClosed as SupervisorClosed,
    TransientSourceError as TransientSourceError,
)
from ._gc import manage_garbage_collection as manage_garbage_collection
from ._progress import ProgressReporter as ProgressReporter, ProgressSlot as ProgressSlot
from ._settings import (
    MAX_MILLISECONDS as MAX_MILLISECONDS,
    EngineSettings as EngineSettings,
    read_bool as read_bool,
    read_int as read_int,
)
from ._snapshot import (
    EngineStats as EngineStats,
    JobChange as JobChange,
    JobError as JobError,
    JobSnapshot as JobSnapshot,
    JobWatch as JobWatch,
    ResultFile as ResultFile,
    ResultInfo as ResultInfo,
)
from ._source import SimulatedSource as SimulatedSource, Source as Source
from ._states import InvalidTransition as InvalidTransition, JobStatus as JobStatus
from ._supervisor import (
    Supervisor as Supervisor,
    open_supervisor as open_supervisor,
    utc_now as utc_now,
)

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_MILLISECONDS",
    "EngineError",
    "EngineSettings",
    "EngineStats",
    "FileUnavailable",
    "IdempotencyConflict",
    "InvalidTransition",
    "JobAlreadyFinished",
    "JobChange",
    "JobClient",
    "JobConflict",
    "JobError",
    "JobExpired",
    "JobNotFound",
    "JobSnapshot",
    "JobStatus",
    "JobWatch",
    "Overloaded",
    "ProgressReporter",
    "ProgressSlot",
    "ResultFile",
    "ResultInfo",
    "ResultNotReady",
    "ResultUnavailable",
    "SettingsError",
    "SimulatedSource",
    "Source",
    "SourceError",
    "Supervisor",
    "SupervisorClosed",
    "TransientSourceError",
    "archive_size",
    "build_archive",
    "content_size",
    "manage_garbage_collection",
    "open_supervisor",
    "read_bool",
    "read_int",
    "utc_now",
]
