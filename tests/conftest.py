"""Shared fixtures: the network guard, a clean environment, the fake AIML API."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from octave_tools import Speech
    from octave_tools.testing import FakeAIMLAPI

_GUARD_DIR = Path(__file__).parent / "_netguard"
_GUARD_LOG = Path(tempfile.mkdtemp(prefix="octave-netguard-")) / "blocked.log"

# Child processes (stdio MCP servers, CLI runs) load the same guard via sitecustomize.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_GUARD_DIR), os.environ.get("PYTHONPATH", "")) if p
)
os.environ["OCTAVE_TOOLS_NETGUARD_LOG"] = str(_GUARD_LOG)
# A subprocess started with a hand-made environment still keeps its ledger and audio
# out of the developer's real user folders.
os.environ["XDG_DATA_HOME"] = str(_GUARD_LOG.parent / "xdg-data")
os.environ["XDG_CACHE_HOME"] = str(_GUARD_LOG.parent / "xdg-cache")
sys.path.insert(0, str(_GUARD_DIR))
import sitecustomize as _netguard  # noqa: E402

_netguard.install()

# Settings the tests must not inherit from the developer's shell.
_ENV_PREFIXES = ("AIMLAPI_", "AIML_API_", "OCTAVE_TOOLS_")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and name != "OCTAVE_TOOLS_NETGUARD_LOG":
            monkeypatch.delenv(name)
    monkeypatch.setenv("OCTAVE_TOOLS_OUTPUT_DIR", str(tmp_path / "audio"))
    monkeypatch.setenv("OCTAVE_TOOLS_DATA_DIR", str(tmp_path / "data"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _GUARD_LOG.exists() and _GUARD_LOG.read_text().strip():
        sys.stderr.write(
            "\nnetwork guard: tests tried to reach the network:\n" + _GUARD_LOG.read_text()
        )
        session.exitstatus = 1


@pytest.fixture(params=["sync", "async"])
def synth(request: pytest.FixtureRequest, fake_aimlapi: FakeAIMLAPI) -> Callable[..., Speech]:
    """Calls synthesize on a fresh sync or async client pointed at the fake."""
    from harness import synthesize_on

    def run(
        text: Any = "Hello there.", *, client: dict[str, Any] | None = None, **kw: Any
    ) -> Speech:
        options = {
            "api_key": fake_aimlapi.api_key,
            "base_url": fake_aimlapi.base_url,
            "engine": "aimlapi",
            **(client or {}),
        }
        return synthesize_on(request.param, options, text, **kw)

    return run


@pytest.fixture
def api_env(fake_aimlapi, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The fake API configured through the environment, as a user would."""
    monkeypatch.setenv("AIMLAPI_API_KEY", fake_aimlapi.api_key)
    monkeypatch.setenv("AIMLAPI_BASE_URL", fake_aimlapi.base_url)
    monkeypatch.setenv("OCTAVE_TOOLS_ENGINE", "aimlapi")
    yield fake_aimlapi
