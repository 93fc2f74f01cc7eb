"""The download-jobs engine: a trio supervisor, its actors and the job model.

It imports nothing from any HTTP library; ``http_api`` translates HTTP into
calls on ``JobClient``.
"""

from ._archive import build_archive as build_archive
from ._archive import content_size as content_size
from ._errors import (
    EngineError as EngineError,
)
from ._errors import (
    JobAlreadyFinished as JobAlreadyFinished,
)
from ._errors import (
    JobConflict as JobConflict,
)
from ._errors import (
    JobNotFound as JobNotFound,
)
from ._errors import (
    ResultNotReady as ResultNotReady,
)
from ._errors import (
    ResultUnavailable as ResultUnavailable,
)
from ._errors import (
    SettingsError as SettingsError,
)
from ._errors import (
    SourceError as SourceError,
)
from ._errors import (
    SupervisorClosed as SupervisorClosed,
)
from ._progress import ProgressReporter as ProgressReporter
from ._progress import ProgressSlot as ProgressSlot
from ._settings import (
    EngineSettings as EngineSettings,
)
from ._settings import (
    read_bool as read_bool,
)
from ._settings import (
    read_int as read_int,
)
from ._snapshot import (
    JobError as JobError,
)
from ._snapshot import (
    JobSnapshot as JobSnapshot,
)
from ._snapshot import (
    ResultFile as ResultFile,
)
from ._snapshot import (
    ResultInfo as ResultInfo,
)
from ._source import SimulatedSource as SimulatedSource
from ._source import Source as Source
from ._states import InvalidTransition as InvalidTransition
from ._states import JobStatus as JobStatus
from ._supervisor import (
    JobClient as JobClient,
)
from ._supervisor import (
    Supervisor as Supervisor,
)
from ._supervisor import (
    open_supervisor as open_supervisor,
)
from ._supervisor import (
    utc_now as utc_now,
)

__all__ = [
    "EngineError",
    "EngineSettings",
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
    "build_archive",
    "content_size",
    "open_supervisor",
    "read_bool",
    "read_int",
    "utc_now",
]
