"""Stateless replicas behind a real nginx: three ``octave-tools serve --transport http``
subprocesses, one nginx in front (as docs/deploy.md sets it up), the fake AIML API behind.

nginx is Debian's ``nginx-light``. Without it these tests skip, except in CI (``CI=true``),
where a missing nginx is a failure. The budget and cache tests also need PostgreSQL
(``OCTAVE_TOOLS_TEST_POSTGRES_URL``; a fresh database per run, see tests/_services.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _services import postgres_database
from harness import MCP_HEADERS, ServerProcess, api_env, http_server, rpc_result, tool_call

from octave_tools import _local
from octave_tools.testing import CREDITS_PER_CHAR, FakeAIMLAPI

REPLICAS = 3


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("nginx is not installed; .ci/run installs nginx-light")
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 512; }}

http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream octave_tools {{
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 5m;

        location / {{
            proxy_pass http://octave_tools;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 300s;
            # Which replica answered, for the test to see the load spread.
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


@contextmanager
def nginx(upstreams: list[str], folder: Path, port: int | None = None) -> Iterator[str]:
    """A real nginx on a free loopback port, proxying to ``upstreams``; its base URL."""
    binary = nginx_binary()
    folder.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
    # As root, nginx's workers would switch to nobody, who cannot use the private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    for attempt in range(5):
        port = port if attempt == 0 and port is not None else free_port()
        conf = folder / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(dir=folder, servers=servers, port=port, user=user), encoding="utf-8"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        up = False
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    up = True
                    break
            except OSError:
                time.sleep(0.05)
        if up:
            break
        proc.kill()
        _, err = proc.communicate(10)
        if attempt == 4 or b"Address already in use" not in err:
            raise AssertionError(f"nginx did not start: {err.decode(errors='replace')}")
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def cluster(
    tmp_path: Path, env: dict[str, str], count: int = REPLICAS
) -> Iterator[tuple[str, list[ServerProcess], str]]:
    """``count`` replicas (separate data folders, one shared audio folder) behind nginx.

    Yields nginx's base URL, the replicas, and the token clients send.
    """
    token = secrets.token_urlsafe(32)
    port = free_port()  # nginx's; the replicas name it as their public URL
    with ExitStack() as stack:
        replicas: list[tuple[str, ServerProcess]] = []
        for i in range(count):
            replica_env = {
                **env,
                "OCTAVE_TOOLS_SERVER_TOKEN": token,
                "OCTAVE_TOOLS_DATA_DIR": str(tmp_path / f"replica{i}"),
                "OCTAVE_TOOLS_OUTPUT_DIR": str(tmp_path / "audio"),
                "OCTAVE_TOOLS_PUBLIC_URL": f"http://127.0.0.1:{port}",
            }
            replicas.append(stack.enter_context(http_server(replica_env)))
        upstreams = [re.sub(r"^http://|/mcp$", "", url) for url, _ in replicas]
        base = stack.enter_context(nginx(upstreams, tmp_path / "nginx", port))
        yield base, [server for _, server in replicas], token


def headers(token: str) -> dict[str, str]:
    return {**MCP_HEADERS, "Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- through nginx


def test_concurrent_calls_through_nginx_all_succeed_on_every_replica(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.delay(0.2, times=100)  # the calls overlap
    calls = 4 * REPLICAS
    with cluster(tmp_path, api_env(fake_aimlapi)) as (base, _, token):
        health = httpx.get(f"{base}/healthz")
        with httpx.Client(headers=headers(token), timeout=60) as http:

            def call(i: int) -> httpx.Response:
                return http.post(f"{base}/mcp", json=tool_call(f"Call number {i}"))

            with ThreadPoolExecutor(calls) as pool:
                answers = list(pool.map(call, range(calls)))
        unauthorized = httpx.post(f"{base}/mcp", json=tool_call("No token"), headers=MCP_HEADERS)

    results = [rpc_result(a) for a in answers]
    assert [r["isError"] for r in results] == [False] * calls
    texts = sorted(r["structuredContent"]["characters"] for r in results)
    assert texts == sorted(len(f"Call number {i}") for i in range(calls))
    urls = {r["structuredContent"]["audio_url"] for r in results}
    assert len(urls) == calls and urls <= set(fake_aimlapi.issued)
    assert len(fake_aimlapi.tts_requests) == calls
    assert len({a.headers["x-upstream"] for a in answers}) == REPLICAS
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert unauthorized.status_code == 401


@pytest.mark.skipif(not _local.is_available(), reason="the [local] extra is not installed")
def test_local_audio_is_fetched_through_nginx_from_any_replica(tmp_path: Path) -> None:
    with cluster(tmp_path, {"OCTAVE_TOOLS_ENGINE": "local"}) as (base, _, token):
        auth = {"Authorization": f"Bearer {token}"}
        result = rpc_result(
            httpx.post(
                f"{base}/mcp", json=tool_call("Served through nginx"), headers=headers(token)
            )
        )
        audio_url = result["structuredContent"]["audio_url"]
        name = audio_url.rpartition("/")[2]
        on_disk = (tmp_path / "audio" / name).read_bytes()
        # Round robin: the replicas answer in turn, and each one finds the clip.
        fetched = [httpx.get(audio_url, headers=auth) for _ in range(REPLICAS)]
        anonymous = httpx.get(audio_url)

    assert audio_url.startswith(f"{base}/audio/speech-")
    assert audio_url in result["structuredContent"]["message"]
    assert [f.status_code for f in fetched] == [200] * REPLICAS
    assert len({f.headers["x-upstream"] for f in fetched}) == REPLICAS
    assert all(f.content == on_disk for f in fetched) and on_disk.startswith(b"RIFF")
    assert {f.headers["content-type"] for f in fetched} == {"audio/wav"}
    assert anonymous.status_code == 401


def test_a_replica_killed_mid_load_leaves_the_others_serving(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    fake_aimlapi.delay(0.1, times=1000)
    with cluster(tmp_path, api_env(fake_aimlapi)) as (base, replicas, token):
        stop = threading.Event()
        before: list[int] = []
        after: list[int] = []
        killed = threading.Event()
        lock = threading.Lock()

        def load(worker: int) -> None:
            with httpx.Client(headers=headers(token), timeout=60) as http:
                n = 0
                while not stop.is_set():
                    started_after_kill = killed.is_set()
                    n += 1
                    try:
                        status = http.post(
                            f"{base}/mcp", json=tool_call(f"Load {worker} {n}")
                        ).status_code
                    except httpx.HTTPError:  # a call the killed replica was answering
                        status = -1
                    with lock:
                        (after if started_after_kill else before).append(status)

        with ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(load, w) for w in range(6)]
            time.sleep(1.5)
            replicas[0].proc.send_signal(signal.SIGKILL)
            replicas[0].proc.wait(10)
            killed.set()
            time.sleep(3)
            stop.set()
            for w in workers:
                w.result()
        health = httpx.get(f"{base}/healthz")

    # Only calls the killed replica was answering could fail (cut off, or nginx's 502).
    assert before.count(200) >= 6 and set(before) <= {200, 502, -1}, before
    assert len(before) - before.count(200) <= 6
    # Every call sent once the replica was dead was served by the others.
    assert len(after) >= 6 and set(after) == {200}, after
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


# ---------------------------------------------------------------- one store behind them


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


def test_replicas_behind_nginx_share_one_daily_budget(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str
) -> None:
    # "Hi" costs 2 x 125 credits; a budget of 1,000 has room for 4 such calls at most.
    budget = 4 * 2 * CREDITS_PER_CHAR
    fake_aimlapi.delay(0.3, times=100)  # overlapping calls: reservations are in flight
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_STORE_URL=pg_url, OCTAVE_TOOLS_MAX_CREDITS=str(budget))
    with (
        cluster(tmp_path, env) as (base, _, token),
        httpx.Client(headers=headers(token), timeout=60) as http,
    ):

        def call(i: int) -> dict[str, Any]:
            # Different voices: not one cached or coalesced call, but 12 paid ones.
            body = tool_call("Hi", request_id=i)
            body["params"]["arguments"]["voice"] = [
                "Ava Song",
                "Vince Douglas",
                "Campfire Narrator",
            ][i % 3]
            return rpc_result(http.post(f"{base}/mcp", json=body))

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, range(12)))

    admitted = [r for r in results if not r["isError"]]
    refused = [r for r in results if r["isError"]]
    assert 3 <= len(admitted) <= 4
    assert len(fake_aimlapi.tts_requests) == len(admitted)
    assert all("budget" in r["content"][0]["text"].lower() for r in refused)


def test_replicas_behind_nginx_share_one_cache(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, pg_url: str
) -> None:
    env = api_env(fake_aimlapi, OCTAVE_TOOLS_STORE_URL=pg_url, OCTAVE_TOOLS_CACHE_TTL="600")
    text = f"Cached across replicas {secrets.token_hex(4)}"
    with (
        cluster(tmp_path, env) as (base, _, token),
        httpx.Client(headers=headers(token), timeout=60) as http,
    ):
        answers = [http.post(f"{base}/mcp", json=tool_call(text)) for _ in range(REPLICAS)]
    results = [rpc_result(a)["structuredContent"] for a in answers]
    assert len({a.headers["x-upstream"] for a in answers}) == REPLICAS
    assert len(fake_aimlapi.tts_requests) == 1
    assert [r["cached"] for r in results] == [False, True, True]
    assert len({r["audio_url"] for r in results}) == 1
