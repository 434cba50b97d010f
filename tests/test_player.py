"""The inline player (an MCP App, spec 2026-01-26) in a real Chromium.

A small host page on loopback embeds the player as the spec's hosts do: the HTML read
from the server's ``ui://`` resource with the official MCP client, served from an origin
of its own (a different port) under the Content-Security-Policy the spec builds from the
resource's ``_meta.ui.csp``, in a sandboxed iframe. The host answers ``ui/initialize``,
sends ``ui/notifications/tool-input`` and then the ``text_to_speech`` result the server
gave for a call on the fake API. Chromium is Debian's ``chromium``, driven by Playwright
(``executable_path``; Playwright downloads no browser). Without it these tests skip,
except in CI (``CI=true``), where a missing one is a failure (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import TextResourceContents

from octave_tools.mcp import PLAYER_URI, create_server
from octave_tools.testing import FakeAIMLAPI

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_binary() -> str:
    found = shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.access(p, os.X_OK)),
        None,
    )
    problem = None
    if found is None:
        problem = "chromium is not installed (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install playwright)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}; .ci/run installs it")
        pytest.skip(problem)
    assert found is not None
    return found


HOST_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>test host</title></head>
<body>
<iframe id="view" sandbox="allow-scripts allow-same-origin" style="width:480px;height:200px"
  src="VIEW_URL"></iframe>
<script type="application/json" id="result">RESULT_JSON</script>
<script>
  const VIEW_ORIGIN = new URL("VIEW_URL").origin;
  const MODE = "MODE";
  const result = JSON.parse(document.getElementById("result").textContent);
  const frame = document.getElementById("view");
  window.received = [];
  window.done = false;
  function post(message) { frame.contentWindow.postMessage(message, VIEW_ORIGIN); }
  window.addEventListener("message", (event) => {
    if (event.source !== frame.contentWindow || event.origin !== VIEW_ORIGIN) return;
    const m = event.data;
    window.received.push(m);
    if (m.method === "ui/initialize") {
      if (MODE === "early") {
        post({jsonrpc: "2.0", method: "ui/notifications/tool-result", params: result});
      }
      post({jsonrpc: "2.0", id: m.id, result: {
        protocolVersion: "2026-01-26",
        hostInfo: {name: "test-host", version: "1"},
        hostCapabilities: {openLinks: {}},
        hostContext: {theme: "dark", displayMode: "inline", platform: "web"}}});
    } else if (m.method === "ui/open-link") {
      post({jsonrpc: "2.0", id: m.id, result: {}});
    } else if (m.method === "ui/notifications/initialized") {
      if (MODE !== "early") {
        const input = {arguments: {text: "Hi"}};
        post({jsonrpc: "2.0", method: "ui/notifications/tool-input", params: input});
        post({jsonrpc: "2.0", method: "ui/notifications/tool-result", params: result});
      }
      window.done = true;
    }
  });
</script>
</body></html>
"""


def csp_for(meta: dict[str, Any] | None) -> str:
    """The Content-Security-Policy the spec (2026-01-26, "CSP Construction") builds."""
    csp = ((meta or {}).get("ui") or {}).get("csp") or {}
    resources = " ".join(csp.get("resourceDomains") or [])
    connect = " ".join(csp.get("connectDomains") or [])
    return (
        "default-src 'none'; "
        f"script-src 'self' 'unsafe-inline' {resources}; "
        f"style-src 'self' 'unsafe-inline' {resources}; "
        f"connect-src 'self' {connect}; "
        f"img-src 'self' data: {resources}; "
        f"font-src 'self' {resources}; "
        f"media-src 'self' data: {resources}; "
        "frame-src 'none'; object-src 'none'; base-uri 'self'"
    )


@contextmanager
def serve(pages: dict[str, tuple[str, dict[str, str]]]) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server of ``pages`` (path -> body, headers); its origin, the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            page = pages.get(self.path.split("?", 1)[0])
            if page is None:
                self.send_error(404)
                return
            body, headers = page
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    finally:
        httpd.shutdown()
        httpd.server_close()


async def speak(api: FakeAIMLAPI, tmp_path: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A text_to_speech result on the wire, the player HTML and its resource ``_meta``."""
    server = create_server(
        api_key=api.api_key, base_url=api.base_url, engine="aimlapi", output_dir=str(tmp_path)
    )
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert (tools["text_to_speech"].meta or {})["ui"] == {"resourceUri": PLAYER_URI}
        result = await client.call_tool("text_to_speech", {"text": "Hello there, <b>friend</b>."})
        (page,) = (await client.read_resource(PLAYER_URI)).contents
    assert result.is_error is False
    wire = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert isinstance(page, TextResourceContents)
    return wire, page.text, page.meta or {}


@contextmanager
def host_for(
    result: dict[str, Any], html: str, meta: dict[str, Any], mode: str = "normal"
) -> Iterator[tuple[str, str, list[str]]]:
    """The host page (one origin) embedding the view (another): host URL, view URL, asked."""
    with (
        serve({"/view.html": (html, {"Content-Security-Policy": csp_for(meta)})}) as (view, asked),
    ):
        view_url = f"{view}/view.html"
        # The result is JSON inside a script element: "<" escaped so no "</script>" ends it.
        page = (
            HOST_PAGE.replace("VIEW_URL", view_url)
            .replace("MODE", mode)
            .replace("RESULT_JSON", json.dumps(result).replace("<", "\\u003c"))
        )
        with serve({"/host.html": (page, {})}) as (origin, _):
            yield f"{origin}/host.html", view_url, asked


async def open_browser(binary: str) -> Any:
    from playwright.async_api import async_playwright

    manager = async_playwright()
    playwright = await manager.start()
    browser = await playwright.chromium.launch(executable_path=binary, headless=True, args=FLAGS)
    return manager, browser


async def run_host(binary: str, url: str) -> tuple[Any, Any, Any]:
    manager, browser = await open_browser(binary)
    page = await browser.new_page()
    await page.goto(url)
    await page.wait_for_function("window.done === true", timeout=15_000)
    return manager, browser, page


@pytest.mark.parametrize("link", ["with-link", "without-link"])
async def test_the_player_shows_the_result_and_plays_the_served_wav(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, link: str
) -> None:
    binary = chromium_binary()
    result, html, meta = await speak(fake_aimlapi, tmp_path)
    if link == "without-link":  # what an HTTP client on protocol 2025-11-25 gets
        result["content"] = result["content"][:1]
    url = result["structuredContent"]["audio_url"]
    assert url.startswith(fake_aimlapi.origin + "/")
    assert fake_aimlapi.origin in meta["ui"]["csp"]["resourceDomains"]
    with host_for(result, html, meta) as (host_url, _, _):
        manager, browser, page = await run_host(binary, host_url)
        try:
            view = page.frame_locator("#view")
            body = view.locator("body")
            await body.and_(view.locator("body[data-state=ready]")).wait_for(timeout=15_000)
            facts = await view.locator("#facts dl, #facts div").all_inner_texts()
            speech = result["structuredContent"]
            assert facts == [
                f"Voice\n{speech['voice']}",
                f"Model\n{speech['model']}",
                f"Credits\n{speech['credits_used']}",
                "Format\nwav",
                f"Characters\n{speech['characters']}",
            ]
            assert await view.locator("#download").get_attribute("href") == url
            assert await view.locator("#speakers").is_hidden()
            assert await view.locator("html").get_attribute("data-theme") == "dark"
            assert await view.locator("#play").get_attribute("aria-label") == "Play"
            await view.locator("#play").click()
            await view.locator("body[data-state=ended]").wait_for(timeout=20_000)
            frame = page.frames[1]
            played = await frame.evaluate(
                "(() => { const a = document.getElementById('audio'); return [a.ended,"
                " a.currentSrc, a.duration > 0 && a.currentTime === a.duration]; })()"
            )
            assert played == [True, url, True]  # played from its URL to its very end
            heard = [r.path for r in fake_aimlapi.requests if r.method == "GET"]
            assert heard and set(heard) == {url.removeprefix(fake_aimlapi.origin)}
            await view.locator("#download").click()  # the host opens links: it asks
            await page.wait_for_function(
                "window.received.some(m => m.method === 'ui/open-link')", timeout=5_000
            )
            opened = await page.evaluate(
                "window.received.filter(m => m.method === 'ui/open-link').map(m => m.params)"
            )
            assert opened == [{"url": url}]
            methods = await page.evaluate("window.received.map(m => m.method)")
            assert methods[:2] == ["ui/initialize", "ui/notifications/initialized"]
            first = await page.evaluate("window.received[0].params")
            assert first["protocolVersion"] == "2026-01-26"
        finally:
            await browser.close()
            await manager.__aexit__(None, None, None)


def tampered(result: dict[str, Any], how: str, evil: str) -> dict[str, Any]:
    bad = json.loads(json.dumps(result))
    if how == "structured":  # the structured URL is not the one the text and link state
        bad["structuredContent"]["audio_url"] = evil
    elif how == "all-but-text":  # link and structured agree; the text never said it
        bad["structuredContent"]["audio_url"] = evil
        bad["content"][1]["uri"] = evil
    elif how == "other-link":  # text and structured agree; the link names another URL
        bad["content"][1]["uri"] = evil
    elif how == "script":
        url = "javascript:alert(1)"
        bad["structuredContent"]["audio_url"] = url
        bad["content"][1]["uri"] = url
        bad["content"][0]["text"] += " " + url
    elif how == "error":
        bad["isError"] = True
    return bad


@pytest.mark.parametrize(
    "how", ["structured", "all-but-text", "other-link", "script", "error", "early"]
)
async def test_a_url_the_result_did_not_issue_shows_and_loads_nothing(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, how: str
) -> None:
    binary = chromium_binary()
    result, html, meta = await speak(fake_aimlapi, tmp_path)
    evil = f"{fake_aimlapi.origin}/not-issued.wav"  # an origin the CSP allows: the page decides
    sent = result if how == "early" else tampered(result, how, evil)
    with host_for(sent, html, meta, mode="early" if how == "early" else "normal") as (
        host_url,
        _,
        asked,
    ):
        manager, browser, page = await run_host(binary, host_url)
        try:
            view = page.frame_locator("#view")
            await view.locator("body[data-state=waiting]").wait_for(state="attached", timeout=5_000)
            await page.wait_for_timeout(300)  # time for a load the page should not start
            assert await view.locator("#player").is_hidden()
            assert await view.locator("#facts").inner_text() == ""
            assert await view.locator("#audio").get_attribute("src") is None
            assert await view.locator("body").get_attribute("data-state") == "waiting"
        finally:
            await browser.close()
            await manager.__aexit__(None, None, None)
    assert [r.path for r in fake_aimlapi.requests if r.method == "GET"] == []
    assert asked == ["/view.html"]


async def test_the_page_opened_on_its_own_with_a_url_shows_and_loads_nothing(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    binary = chromium_binary()
    result, html, meta = await speak(fake_aimlapi, tmp_path)
    url = result["structuredContent"]["audio_url"]
    with serve({"/view.html": (html, {"Content-Security-Policy": csp_for(meta)})}) as (view, _):
        manager, browser = await open_browser(binary)
        try:
            page = await browser.new_page()
            await page.goto(f"{view}/view.html?audio_url={url}#{url}")
            await page.wait_for_timeout(300)
            assert await page.locator("#player").is_hidden()
            assert await page.locator("body").get_attribute("data-state") == "waiting"
        finally:
            await browser.close()
            await manager.__aexit__(None, None, None)
    assert [r.path for r in fake_aimlapi.requests if r.method == "GET"] == []


async def test_dialogue_parts_show_who_speaks_as_text(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    binary = chromium_binary()
    result, html, meta = await speak(fake_aimlapi, tmp_path)
    speech = result["structuredContent"]
    hostile = "<img src=x onerror=\"window.parent.postMessage('pwned', '*')\">"
    speech["parts"] = [
        {"index": 0, "speaker": "Ada", "voice": "Ava Song", "audio_url": speech["audio_url"]},
        {"index": 1, "speaker": hostile, "voice": "Vince Douglas"},
        {"index": 2, "speaker": "Ada", "voice": "Ava Song"},
    ]
    with host_for(result, html, meta) as (host_url, _, _):
        manager, browser, page = await run_host(binary, host_url)
        try:
            view = page.frame_locator("#view")
            await view.locator("body[data-state=ready]").wait_for(timeout=15_000)
            items = await view.locator("#speakers li").all_inner_texts()
            assert items == ["Ada (Ava Song)", f"{hostile} (Vince Douglas)", "Ada (Ava Song)"]
            assert await view.locator("#speakers img").count() == 0
            assert "Parts" in await view.locator("#facts").inner_text()
            await page.wait_for_timeout(200)
            assert "pwned" not in await page.evaluate("window.received")
        finally:
            await browser.close()
            await manager.__aexit__(None, None, None)


async def test_a_dialogue_result_names_its_speakers_and_a_local_file_is_not_loaded(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    """Over stdio the joined dialogue is a file:// URL: the facts and who speaks show,
    the page says where the file is, and loads nothing (a sandboxed page cannot)."""
    binary = chromium_binary()
    server = create_server(
        api_key=fake_aimlapi.api_key,
        base_url=fake_aimlapi.base_url,
        engine="aimlapi",
        output_dir=str(tmp_path),
    )
    lines = [
        {"voice": "Ava Song", "text": "Shall we?"},
        {"voice": "Vince Douglas", "text": "We shall."},
        {"voice": "Ava Song", "text": "Good."},
    ]
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert (tools["text_to_dialogue"].meta or {})["ui"] == {"resourceUri": PLAYER_URI}
        result = await client.call_tool("text_to_dialogue", {"lines": lines})
        (page,) = (await client.read_resource(PLAYER_URI)).contents
    assert isinstance(page, TextResourceContents)
    wire = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    url = wire["structuredContent"]["audio_url"]
    assert url.startswith("file://")
    fetched = len(fake_aimlapi.requests)  # the server fetched the parts to join them
    with host_for(wire, page.text, page.meta or {}) as (host_url, _, asked):
        manager, browser, tab = await run_host(binary, host_url)
        try:
            view = tab.frame_locator("#view")
            await view.locator("body[data-state=local]").wait_for(state="attached", timeout=15_000)
            speakers = await view.locator("#speakers li").all_inner_texts()
            assert speakers == ["Ava Song", "Vince Douglas", "Ava Song"]
            assert await view.locator("#note").inner_text() == (
                f"This audio was saved on the computer that ran the tool: {url}"
            )
            assert await view.locator("#controls").is_hidden()
            assert await view.locator("#audio").get_attribute("src") is None
        finally:
            await browser.close()
            await manager.__aexit__(None, None, None)
    assert len(fake_aimlapi.requests) == fetched
    assert asked == ["/view.html"]
