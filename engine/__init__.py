"""The download-jobs engine: a trio supervisor, its actors and the job model.

It imports nothing from any HTTP library; ``http_api`` translates HTTP into
calls on ``JobClient``.
"""

from ._archive import (
    archive_size as archive_size,
    build_archive as build_archive,
    content_size as content_size,
)
from ._errors import (
    EngineError as EngineError,
    FileUnavailable as FileUnavailable,
    JobAlreadyFinished as JobAlreadyFinished,
    JobConflict as JobConflict,
    JobNotFound as JobNotFound,
    ResultNotReady as ResultNotReady,
    ResultUnavailable as ResultUnavailable,
    SettingsError as SettingsError,
    SourceError as SourceError,
    SupervisorClosed as SupervisorClosed,
)
from ._progress import ProgressReporter as ProgressReporter, ProgressSlot as ProgressSlot
from ._settings import (
    EngineSettings as EngineSettings,
    read_bool as read_bool,
    read_int as read_int,
)
from ._snapshot import (
    JobError as JobError,
    JobSnapshot as JobSnapshot,
    ResultFile as ResultFile,
    ResultInfo as ResultInfo,
)
from ._source import SimulatedSource as SimulatedSource, Source as Source
from ._states import InvalidTransition as InvalidTransition, JobStatus as JobStatus
from ._supervisor import (
    JobClient as JobClient,
    Supervisor as Supervisor,
    open_supervisor as open_supervisor,
    utc_now as utc_now,
)

__all__ = [
    "EngineError",
    "EngineSettings",
    "FileUnavailable",
    "InvalidTransition",
    "JobAlreadyFinished",
    "JobClient",
    "JobConflict",
    "JobError",
    "JobNotFound",
    "JobSnapshot",
    "JobStatus",
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
    "archive_size",
    "build_archive",
    "content_size",
    "open_supervisor",
    "read_bool",
    "read_int",
    "utc_now",
]
