"""``/docs``: Swagger UI served from the package, so it works on a host with no internet.

FastAPI's own page loads Swagger UI's JavaScript and CSS from a CDN and its favicon from
fastapi's site; offline it is blank. Here the assets come from the pinned
``swagger-ui-bundle`` package (Swagger UI's own ``dist`` files, Apache-2.0), served by
:func:`docs_router` under ``/docs/assets/`` from an allow-list of file names, and the
page names no other host. Swagger UI's online validator badge is switched off too.
ReDoc (``/redoc``), which has no packaged build, is not served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

__all__ = ["ASSETS_PREFIX", "DOCS_PATH", "SWAGGER_ASSETS", "docs_router"]

DOCS_PATH: Final = "/docs"
ASSETS_PREFIX: Final = "/docs/assets/"
OAUTH2_REDIRECT_PATH: Final = "/docs/oauth2-redirect"
ASSETS_DIR: Final = Path(swagger_ui_bundle.swagger_ui_path)
# The only files served, with their media types (nothing else of the directory is).
SWAGGER_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# Browsers may keep an asset a day; a new package version changes nothing's name, so
# not longer than that.
ASSET_CACHE_CONTROL: Final = "public, max-age=86400"


def docs_router(title: str, openapi_url: str) -> APIRouter:
    """The Swagger UI page, its OAuth2 redirect page and its assets."""
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_PATH)
    def swagger_page() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            swagger_js_url=f"{ASSETS_PREFIX}swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PREFIX}swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PREFIX}favicon-32x32.png",
            oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get(OAUTH2_REDIRECT_PATH)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(ASSETS_PREFIX + "{name}")
    def asset(name: str) -> Response:
        media_type = SWAGGER_ASSETS.get(name)
        if media_type is None:
            return JSONResponse({"error": f"no docs asset {name[:60]!r}"}, status_code=404)
        return FileResponse(
            ASSETS_DIR / name,
            media_type=media_type,
            headers={"Cache-Control": ASSET_CACHE_CONTROL},
        )

    return router
