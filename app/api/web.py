"""The page that watches a story denoise: `GET /` and its static files under `/static`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from app.api.security import NOSNIFF, PAGE_HEADERS

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The page has no build step, so its file names carry no content hash: browsers must revalidate
# (ETag, 304) on every load, or a new release would run with yesterday's scripts.
REVALIDATE = {"Cache-Control": "no-cache"}


class RevalidatedFiles(StaticFiles):
    """StaticFiles whose responses tell browsers to revalidate before reuse."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE | NOSNIFF)
        return response


def index_page() -> FileResponse:
    """The page itself; its scripts and styles come from `static_files()`."""
    return FileResponse(WEB_DIR / "index.html", headers=REVALIDATE | PAGE_HEADERS)


def static_files() -> RevalidatedFiles:
    """app/web as it is on disk (no build step)."""
    return RevalidatedFiles(directory=WEB_DIR)
