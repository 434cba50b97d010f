"""octave-tools: text-to-speech for LLM agents, on the AIML API (hume/octave-2 by default).

The core has no LangChain or MCP imports; those faces live in
``octave_tools.langchain`` and ``octave_tools.mcp``.
"""

from ._files import default_output_dir, write_atomic
from ._redact import basic_config as configure_logging
from ._settings import (
    SETTING_NAMES,
    SETTINGS,
    Setting,
    Settings,
    SettingsOptions,
    check_options,
    is_loopback,
)
from ._version import __version__
from .catalogue import MODELS, ModelSpec
from .client import AsyncOctaveClient, OctaveClient
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientKeyLimitError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OctaveError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
)
from .models import DialogueLine, Speech, SpeechPart, UsageGroup, UsageReport, VoiceList
from .voices import DEFAULT_FORMAT, DEFAULT_MODEL, DEFAULT_VOICE, FORMATS, MAX_TEXT_CHARS, VOICES

__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_MODEL",
    "DEFAULT_VOICE",
    "FORMATS",
    "MAX_TEXT_CHARS",
    "MODELS",
    "SETTINGS",
    "SETTING_NAMES",
    "VOICES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncOctaveClient",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientKeyLimitError",
    "ConfigurationError",
    "DialogueLine",
    "InvalidInputError",
    "ModelSpec",
    "NotFoundError",
    "OctaveClient",
    "OctaveError",
    "RateLimitError",
    "ServerError",
    "Setting",
    "Settings",
    "SettingsOptions",
    "Speech",
    "SpeechPart",
    "UnexpectedResponseError",
    "UsageGroup",
    "UsageReport",
    "VoiceList",
    "__version__",
    "check_options",
    "configure_logging",
    "default_output_dir",
    "is_loopback",
    "write_atomic",
]
