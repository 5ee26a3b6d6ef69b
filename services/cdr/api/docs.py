"""/docs: the OpenAPI document rendered by Swagger UI, from the assets packaged in the
swagger-ui-bundle-v2 wheel (no CDN: the page works where the API works)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>CDR API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

# A script file rather than an inline one, so a strict Content-Security-Policy in front
# of the API does not break the page.
_INIT = "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true});\n"


async def _page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


async def _init(request: Request) -> Response:
    return Response(_INIT, media_type="text/javascript")


def docs_routes() -> list[Route | Mount]:
    return [
        Route("/docs", _page, methods=["GET"]),
        Route("/docs/init.js", _init, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static"),
    ]
