"""The dashboard's routes and assets: one shell for every page, versioned immutable assets, strict headers, no CDN."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from pipeline.web.dashboard import (
    ASSET_CACHE_CONTROL,
    CONTENT_SECURITY_POLICY,
    SHELL_FILE,
    STATIC_DIR,
    assets_version,
    dashboard_routes,
)

SCRIPTS = sorted(STATIC_DIR.rglob("*.js"))
#: What would put markup built from data into the page, or run strings as code.
UNSAFE_JS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
#: A name, not an address: SVG elements are created in it.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
IMPORT = re.compile(r"""^import .* from '(\.{1,2}/[^']+)';$""", re.MULTILINE)


class Client:
    """Requests straight into the ASGI app, no socket (Starlette's TestClient trips a deprecation of anyio's)."""

    def __init__(self) -> None:
        self.app = Starlette(routes=dashboard_routes())

    def get(self, path: str) -> httpx.Response:
        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as client:
                return await client.get(path)

        return asyncio.run(fetch())


@pytest.fixture(scope="module")
def client() -> Client:
    return Client()


def assets_path(client: Client) -> str:
    match = re.search(r'src="(/ops/static/[0-9a-f]{12})/app\.js"', client.get("/ops").text)
    assert match, "the shell names no versioned app.js"
    return match.group(1)


@pytest.mark.parametrize("path", ["/ops", "/ops/", "/ops/dead-letters", "/ops/dead-letters/42", "/ops/emails/7"])
def test_every_page_gets_the_shell_with_strict_headers(client: Client, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert '<div id="app"' in answer.text
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"


def test_assets_are_served_immutable_under_their_version(client: Client) -> None:
    base = assets_path(client)
    script = client.get(f"{base}/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == ASSET_CACHE_CONTROL
    assert script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert client.get(f"{base}/pages/dead_letters.js").status_code == 200
    assert client.get(f"{base}/app.css").headers["content-type"].startswith("text/css")


def test_an_asset_of_another_deploy_is_missing_not_a_page(client: Client) -> None:
    stale = client.get("/ops/static/000000000000/app.js")
    assert stale.status_code == 404 and "<html" not in stale.text
    assert client.get(f"{assets_path(client)}/nothing.js").status_code == 404


def test_the_version_follows_the_assets_contents(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("one")
    first = assets_version(tmp_path)
    assert assets_version(tmp_path) == first
    (tmp_path / "a.js").write_text("two")
    assert assets_version(tmp_path) != first


def test_the_shell_has_no_inline_script_or_style() -> None:
    shell = SHELL_FILE.read_text()
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", shell))
    assert "<style" not in shell and "style=" not in shell and " on" not in re.sub(r"\s+", " ", shell).lower()


@pytest.mark.parametrize("asset", [*SCRIPTS, STATIC_DIR / "app.css", SHELL_FILE], ids=lambda p: p.name)
def test_nothing_is_fetched_from_another_host(asset: Path) -> None:
    text = asset.read_text().replace(SVG_NAMESPACE, "")
    assert not re.search(r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/""", text, re.IGNORECASE), asset
    assert "@import" not in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_build_the_page_from_text_and_import_files_that_exist(script: Path) -> None:
    source = script.read_text()
    assert not UNSAFE_JS.search(source), script
    for target in IMPORT.findall(source):
        assert (script.parent / target).resolve().is_file(), f"{script.name} imports {target}"
