"""The browsable API page: Swagger UI at `GET /docs` over the server's own OpenAPI document.

The page's script and styles are served from the installed `swagger-ui-py` package, not from a
CDN, so the page works on a machine with no internet. That package ships Swagger UI 5,
which reads OpenAPI 3.1 (what `/openapi.json` is); the Swagger UI 4 in `swagger-ui-bundle`
refuses 3.1 documents. Without the package, `/docs` answers 404 with the install line.
"""

from __future__ import annotations

import html
import importlib.util
import json
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["ASSETS", "docs_routes", "swagger_ui_dir"]

# The only files the page needs; nothing else in the package directory is reachable.
ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: {openapi_url},
      dom_id: "#swagger-ui",
      deepLinking: true,
      displayRequestDuration: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    }});
  </script>
</body>
</html>
"""


def swagger_ui_dir() -> Path | None:
    """The directory of Swagger UI's static files, or None when `swagger-ui-py` is missing.

    Found without importing the package, whose `__init__` pulls in web-framework adapters.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if all((static / name).is_file() for name in ASSETS) else None


def docs_routes(
    openapi_url: str = "/openapi.json",
    *,
    title: str = "torchshelf API",
    path: str = "/docs",
) -> list[BaseRoute]:
    """Routes for `GET /` (redirect to the page), `GET /docs` and `GET /docs/assets/{name}`.

    Example:
        >>> app = Starlette(routes=[*api_routes, *docs_routes("/openapi.json")])
    """
    static = swagger_ui_dir()
    assets = f"{path}/assets"
    page = _PAGE.format(
        title=html.escape(title),
        assets=assets,
        openapi_url=json.dumps(openapi_url).replace("</", "<\\/"),
    ).encode()

    async def root(request: Request) -> Response:
        return RedirectResponse(path, status_code=307)

    async def docs(request: Request) -> Response:
        if static is None:
            return JSONResponse(
                {
                    "error": "the docs page needs Swagger UI's files: pip install swagger-ui-py; "
                    f"the API itself is described at {openapi_url}"
                },
                status_code=404,
            )
        return HTMLResponse(page)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if static is None or name not in ASSETS:
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        return FileResponse(
            static / name,
            media_type=ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return [
        Route("/", root, methods=["GET"]),
        Route(path, docs, methods=["GET"]),
        Route(assets + "/{name}", asset, methods=["GET"]),
    ]
