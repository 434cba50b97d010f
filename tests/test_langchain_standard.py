"""The langchain-tests standard suites for the tools; integration runs against the fake API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from octave_tools._settings import Settings
from octave_tools.langchain import OctaveDialogueTool, OctaveTTSTool, OctaveVoicesTool
from octave_tools.testing import FakeAIMLAPI

EXAMPLE_TEXT = "Hello from the LangChain standard tests."

ENV = {
    "AIMLAPI_API_KEY": "env-key",
    "AIMLAPI_BASE_URL": "http://127.0.0.1:9/v1",
    "OCTAVE_TOOLS_VOICE": "ava song",
    "OCTAVE_TOOLS_FORMAT": "mp3",
    "OCTAVE_TOOLS_TIMEOUT": "12.5",
    "OCTAVE_TOOLS_MAX_RETRIES": "1",
    "OCTAVE_TOOLS_ENGINE": "aimlapi",
    "OCTAVE_TOOLS_OUTPUT_DIR": "/tmp/octave-langchain-audio",
}


def settings_from(env: dict[str, str]) -> Settings:
    """What a client would make of the test's environment with ``env`` on top."""
    return Settings.load(environ={**os.environ, **env})


class TestTTSToolUnit(ToolsUnitTests):
    """No key, no server: the tool must still construct and describe itself."""

    @property
    def tool_constructor(self) -> type[OctaveTTSTool]:
        return OctaveTTSTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"text": EXAMPLE_TEXT, "voice": "Ava Song", "format": "mp3"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {}, {"settings": settings_from(ENV)}


DIALOGUE = {
    "lines": [
        {"voice": "Ava Song", "text": "Welcome to the show."},
        {"voice": "Vince Douglas", "text": "Thanks for having me."},
    ],
    "format": "mp3",
}


class TestDialogueToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[OctaveDialogueTool]:
        return OctaveDialogueTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return DIALOGUE

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {}, {"settings": settings_from(ENV)}


class TestVoicesToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[OctaveVoicesTool]:
        return OctaveVoicesTool

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {}, {"settings": settings_from(ENV)}


class TestTTSToolIntegration(ToolsIntegrationTests):
    """Each standard call really reaches the fake AIML API, configured by the environment."""

    @pytest.fixture(autouse=True)
    def _api(self, api_env: FakeAIMLAPI, request: pytest.FixtureRequest) -> Iterator[None]:
        yield
        calls = 0 if request.node.name == "test_no_overrides_DO_NOT_OVERRIDE" else 1
        body = {"model": "hume/octave-2", "text": EXAMPLE_TEXT, "format": "mp3"}
        body["voice"] = "Ava Song"
        assert [r.json for r in api_env.tts_requests] == [body] * calls

    @property
    def tool_constructor(self) -> type[OctaveTTSTool]:
        return OctaveTTSTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"text": EXAMPLE_TEXT, "voice": "Ava Song", "format": "mp3"}


class TestVoicesToolIntegration(ToolsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _api(self, api_env: FakeAIMLAPI) -> Iterator[None]:
        yield
        assert api_env.requests == []  # listing voices never touches the network

    @property
    def tool_constructor(self) -> type[OctaveVoicesTool]:
        return OctaveVoicesTool


class TestDialogueToolIntegration(ToolsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _api(self, api_env: FakeAIMLAPI, request: pytest.FixtureRequest) -> Iterator[None]:
        yield
        calls = 0 if request.node.name == "test_no_overrides_DO_NOT_OVERRIDE" else 1
        spoken = sorted((r.json["voice"], r.json["text"]) for r in api_env.tts_requests)
        lines = sorted((line["voice"], line["text"]) for line in DIALOGUE["lines"])
        assert spoken == lines * calls

    @property
    def tool_constructor(self) -> type[OctaveDialogueTool]:
        return OctaveDialogueTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return DIALOGUE
