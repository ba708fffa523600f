"""What routes depend on, typed and never None: the lifespan-owned runtime, and what it serves with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.runtime import ModelRuntime, Serving


def get_runtime(request: Request) -> ModelRuntime:
    """The runtime that `create_app` made and the lifespan runs."""
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def get_serving(runtime: RuntimeDep) -> Serving:
    """The loaded checkpoint and its running engine; a 503 with Retry-After (ModelNotReady) until then."""
    return runtime.serving()


ServingDep = Annotated[Serving, Depends(get_serving)]


def get_admitting(runtime: RuntimeDep) -> Serving:
    """As `get_serving`, for routes that start new work: also a 503 while the server drains."""
    return runtime.admitting()


AdmittingDep = Annotated[Serving, Depends(get_admitting)]
