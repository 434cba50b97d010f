"""A real Prometheus scrapes two replicas with docs/deploy.md's scrape config, and its
query API shows the counters moving after calls.

Prometheus is Debian's ``prometheus`` package. Without it this test skips, except in CI
(``CI=true``), where a missing binary is a failure (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import MCP_HEADERS, api_env, http_server, rpc_result, tool_call

from octave_tools.testing import FakeAIMLAPI

DEPLOY = Path(__file__).parent.parent / "docs" / "deploy.md"
TOKEN = secrets.token_urlsafe(24)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus is not installed; .ci/run installs it")
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(targets: list[str], token_file: Path) -> str:
    """docs/deploy.md's scrape config, pointed at this test's replicas and token."""
    text = DEPLOY.read_text(encoding="utf-8")
    block = re.search(r"<!-- prometheus-scrape-config -->\n```yaml\n(.*?)```", text, re.S)
    assert block is not None, "docs/deploy.md lost its scrape config"
    config = block.group(1)
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    config = config.replace("/etc/prometheus/octave-tools.token", str(token_file))
    listed = ", ".join(f'"{t}"' for t in targets)
    config, count = re.subn(r"targets: \[.*\]", f"targets: [{listed}]", config)
    assert count == 1
    return config


def query(base: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def eventually(base: str, promql: str, expected: float, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    seen: list[dict[str, Any]] = []
    while time.monotonic() < end:
        seen = query(base, promql)
        if seen and float(seen[0]["value"][1]) == expected:
            return
        time.sleep(0.25)
    raise AssertionError(f"{promql} never reached {expected}; last: {seen}")


@pytest.fixture
def replicas(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> Iterator[list[str]]:
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_SERVER_TOKEN=TOKEN,
        OCTAVE_TOOLS_DATA_DIR=str(tmp_path / "shared"),  # one SQLite ledger for both
        OCTAVE_TOOLS_MAX_CREDITS="1000000",
    )
    with ExitStack() as stack:
        yield [stack.enter_context(http_server(env))[0] for _ in range(2)]


def test_prometheus_scrapes_two_replicas_and_sees_the_calls(
    replicas: list[str], fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    targets = [url.removeprefix("http://").removesuffix("/mcp") for url in replicas]
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(targets, token_file))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        eventually(base, 'sum(up{job="octave-tools"})', 2)
        for index, text in enumerate(["One.", "Two.", "Three."]):
            url = replicas[index % 2]
            body = tool_call(text)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            result = rpc_result(httpx.post(url, json=body, headers=MCP_HEADERS | auth, timeout=30))
            assert result["isError"] is False
        eventually(base, 'sum(octave_tools_calls_total{outcome="ok"})', 3)
        eventually(base, "count(octave_tools_calls_total)", 2)  # one series per replica
        billed = sum(len(t) for t in ("One.", "Two.", "Three.")) * 125
        eventually(base, "sum(octave_tools_credits_total)", billed)
        eventually(
            base, 'min(octave_tools_budget_remaining_credits{budget="global"})', 1_000_000 - billed
        )
        assert len(fake_aimlapi.tts_requests) == 3
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
