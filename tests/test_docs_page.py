"""The browsable API page: `GET /docs` renders Swagger UI from the server's own /openapi.json.

The browser test drives Debian's chromium through Playwright against a real `shelf serve`, lists
every api, runs one "Try it out" -> "Execute" call and keeps a screenshot in
test-artifacts/docs.png. It is skipped (with the install line) where Playwright or chromium is
missing: `pip install playwright` and `apt-get install -y chromium`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from test_examples import ROOT, run_example, serve

from torchshelf.serving.docs import ASSETS, docs_routes, swagger_ui_dir

ARTIFACTS = ROOT / "test-artifacts"


def _app() -> Starlette:
    async def openapi(request: object) -> JSONResponse:
        return JSONResponse(
            {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}}
        )

    return Starlette(
        routes=[Route("/openapi.json", openapi), *docs_routes("/openapi.json", title="t <x>")]
    )


def test_root_redirects_to_the_docs_page() -> None:
    with TestClient(_app()) as client:
        r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/docs"


@pytest.mark.skipif(swagger_ui_dir() is None, reason="pip install swagger-ui-py")
def test_docs_page_and_its_assets_are_served_from_the_installed_package() -> None:
    with TestClient(_app()) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'url: "/openapi.json"' in page.text and "<title>t &lt;x&gt;</title>" in page.text
        assert "https://" not in page.text  # nothing from a CDN: the page works offline
        for name, media in ASSETS.items():
            r = client.get(f"/docs/assets/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media, name
            assert r.content == (swagger_ui_dir() / name).read_bytes()  # type: ignore[operator]
        assert (
            client.get("/docs/assets/swagger-editor.js").status_code == 404
        )  # only what the page needs
        assert client.get("/docs/assets/..%2F__init__.py").status_code == 404


def test_docs_page_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchshelf.serving.docs as docs

    monkeypatch.setattr(docs, "swagger_ui_dir", lambda: None)
    app = Starlette(routes=docs.docs_routes())
    with TestClient(app) as client:
        r = client.get("/docs")
    assert r.status_code == 404 and "pip install swagger-ui-py" in r.json()["error"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.mark.slow
def test_docs_page_in_a_real_browser_lists_every_api_and_runs_one(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium")
    if swagger_ui_dir() is None:
        pytest.skip("no Swagger UI files: pip install swagger-ui-py")
    home = tmp_path / "shelf"
    run_example(home, "multi_model_service/save.py")
    with serve(home, "examples/multi_model_service/service.py:MultiPyTorchService") as srv:
        r = httpx.get(f"{srv.url}/", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"].endswith("/docs"), (
            "GET / does not redirect to /docs: are docs_routes() wired into core/serving/app.py?"
        )
        apis = [
            path
            for path, ops in httpx.get(f"{srv.url}/openapi.json").json()["paths"].items()
            if "post" in ops
        ]
        assert sorted(p for p in apis if not p.startswith("/v2")) == [
            "/classify",
            "/detect_objects",
            "/generate_image",
        ]
        # the Open Inference Protocol routes are listed too (checked on the page below)
        assert {"/v2/models/classify/infer", "/v2/repository/index"} <= set(apis)
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
                page.goto(f"{srv.url}/", wait_until="networkidle")  # the redirect, then the page
                assert page.url == f"{srv.url}/docs"
                page.wait_for_selector(".opblock-summary", timeout=30_000)
                for path in apis:
                    summary = page.locator(
                        f'.opblock-post .opblock-summary-path[data-path="{path}"]'
                    )
                    assert summary.count() == 1, f"{path} is not listed on /docs"

                block = page.locator("#operations-default-generate_image")
                block.locator(".opblock-summary").click()
                block.locator("button.try-out__btn").click()
                block.locator("textarea.body-param__text").fill(json.dumps({"noise": [[0.5] * 16]}))
                block.locator("button.execute").click()
                response = block.locator(".live-responses-table tr.response").first
                response.wait_for(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
                assert response.locator(".response-col_status").inner_text().strip() == "200"
                generated = json.loads(
                    response.locator(".response-col_description pre").first.inner_text()
                )
                assert len(generated) == 3 and len(generated[0]) == 8 and len(generated[0][0]) == 8
                assert not errors, errors
            finally:
                browser.close()
    assert (ARTIFACTS / "docs.png").stat().st_size > 10_000
