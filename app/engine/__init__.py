"""The step-level batching engine: a thread that owns the model and denoises many requests at once.

No web framework here: requests come in through `Engine.submit`, updates go out through a
`Publish` callback (for asyncio readers, `UpdateChannel.publish`).
"""

from app.engine.channel import UpdateChannel
from app.engine.engine import Engine
from app.engine.request import (
    Change,
    EngineError,
    EngineStopped,
    Failed,
    Finished,
    GenerationSpec,
    Outcome,
    QueueFull,
    Remask,
    RequestHandle,
    Reveal,
    StepUpdate,
    Update,
    net_changes,
)
from app.engine.stats import EngineStats, StatsSnapshot

__all__ = [
    "Change",
    "Engine",
    "EngineError",
    "EngineStats",
    "EngineStopped",
    "Failed",
    "Finished",
    "GenerationSpec",
    "Outcome",
    "QueueFull",
    "Remask",
    "RequestHandle",
    "Reveal",
    "StatsSnapshot",
    "StepUpdate",
    "Update",
    "UpdateChannel",
    "net_changes",
]
