"""/console: the CDR console, static files shipped in the package (``cdr/console``).

The page talks to the public API only, with the token from the browser tab's session
storage. It runs under a strict Content-Security-Policy (scripts, styles and requests
from this origin only, no inline script), so data from the API can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent.parent / "console"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _page(request: Request) -> Response:
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def _slash(request: Request) -> Response:
    return RedirectResponse("/console", status_code=308)


def console_routes() -> list[Route | Mount]:
    return [
        Route("/console", _page, methods=["GET"]),
        Route("/console/", _slash, methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=str(ASSETS)), name="console-static"),
    ]
