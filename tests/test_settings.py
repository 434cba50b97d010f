"""Settings: arguments, then environment, then defaults; the key never shows."""

from __future__ import annotations

import pytest

from octave_tools import ConfigurationError
from octave_tools._settings import Settings


def test_defaults_with_an_empty_environment() -> None:
    s = Settings.load(environ={})
    assert s.api_key is None
    assert s.base_url == "https://api.aimlapi.com/v1"
    assert s.tts_url() == "https://api.aimlapi.com/v1/tts"
    assert (s.model, s.voice, s.format, s.timeout, s.max_retries, s.engine) == (
        "hume/octave-2",
        None,
        None,
        60.0,
        2,
        "auto",
    )


def test_environment_is_read_with_fallback_names() -> None:
    s = Settings.load(
        environ={
            "AIML_API_KEY": "k2",
            "AIMLAPI_API_BASE": "https://proxy.example/v1/",
            "OCTAVE_TOOLS_MODEL": "other/model",
            "OCTAVE_TOOLS_VOICE": "Ava Song",
            "OCTAVE_TOOLS_FORMAT": "MP3",
            "OCTAVE_TOOLS_TIMEOUT": "2.5",
            "OCTAVE_TOOLS_MAX_RETRIES": "0",
            "OCTAVE_TOOLS_ENGINE": "AIMLAPI",
        }
    )
    assert s.require_key() == "k2"
    assert s.base_url == "https://proxy.example/v1"
    assert (s.model, s.voice, s.format, s.timeout, s.max_retries, s.engine) == (
        "other/model",
        "Ava Song",
        "mp3",
        2.5,
        0,
        "aimlapi",
    )


def test_primary_names_win_over_fallbacks_and_arguments_win_over_both() -> None:
    env = {"AIMLAPI_API_KEY": "primary", "AIML_API_KEY": "fallback"}
    assert Settings.load(environ=env).require_key() == "primary"
    assert Settings.load(api_key="arg", environ=env).require_key() == "arg"


def test_missing_key_is_an_error_only_when_needed() -> None:
    s = Settings.load(environ={})
    with pytest.raises(ConfigurationError) as info:
        s.require_key()
    assert "Set AIMLAPI_API_KEY" in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OCTAVE_TOOLS_TIMEOUT": "soon"}, "OCTAVE_TOOLS_TIMEOUT must be a positive number"),
        ({"OCTAVE_TOOLS_TIMEOUT": "-1"}, "OCTAVE_TOOLS_TIMEOUT must be a positive number"),
        ({"OCTAVE_TOOLS_TIMEOUT": "inf"}, "OCTAVE_TOOLS_TIMEOUT must be a positive number"),
        ({"OCTAVE_TOOLS_MAX_RETRIES": "11"}, "OCTAVE_TOOLS_MAX_RETRIES must be a whole number"),
        ({"OCTAVE_TOOLS_MAX_RETRIES": "two"}, "OCTAVE_TOOLS_MAX_RETRIES must be a whole number"),
        ({"OCTAVE_TOOLS_ENGINE": "cloud"}, "OCTAVE_TOOLS_ENGINE must be one of auto, aimlapi"),
        ({"OCTAVE_TOOLS_FORMAT": "ogg"}, "OCTAVE_TOOLS_FORMAT must be wav or mp3"),
        ({"AIMLAPI_BASE_URL": "ftp://x"}, "AIMLAPI_BASE_URL must be an http(s) URL"),
        ({"AIMLAPI_BASE_URL": "http://api.example/v1"}, "uses plain http to a non-loopback"),
        ({"AIMLAPI_BASE_URL": "https://u:p@api.example"}, "must not contain credentials"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(environ=env)


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(ConfigurationError, match="^timeout must be a positive number"):
        Settings.load(timeout=0, environ={})


def test_plain_http_is_allowed_to_loopback_only() -> None:
    assert Settings.load(base_url="http://127.0.0.1:9/v1", environ={}).base_url.startswith("http:")
    assert Settings.load(base_url="http://localhost:9/v1", environ={}).base_url.startswith("http:")


def test_repr_str_and_pickle_never_show_the_key() -> None:
    key = "sk-plant-7f3a9e"
    s = Settings.load(api_key=key, environ={})
    assert key not in repr(s)
    assert key not in str(s)
    assert key not in repr(s.api_key)
    assert "api_key=<set>" in repr(s)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.parametrize("key", ["abc\ndefSECRET123", "abcé-SECRET123", "abc def-SECRET123"])
def test_a_malformed_key_is_refused_without_being_shown(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.load(api_key=key, environ={})
    assert "SECRET123" not in str(info.value)
    assert "copy it again" in str(info.value)


def test_every_setting_is_declared_once_and_matches_settings_and_options() -> None:
    import dataclasses
    import typing

    from octave_tools._settings import SETTING_NAMES, SettingsOptions

    assert tuple(f.name for f in dataclasses.fields(Settings)) == SETTING_NAMES
    assert tuple(typing.get_type_hints(SettingsOptions)) == SETTING_NAMES


def test_an_unknown_setting_is_a_type_error_with_a_suggestion() -> None:
    from octave_tools import AsyncOctaveClient, OctaveClient

    for make in (OctaveClient, AsyncOctaveClient):
        with pytest.raises(
            TypeError, match=r"Unknown setting 'cache_tl'\. Did you mean 'cache_ttl'\?"
        ):
            make(cache_tl=600)  # type: ignore[call-arg]


def test_max_credits_is_a_setting_checked_like_the_others() -> None:
    with pytest.raises(ConfigurationError, match="max_credits must be a number of 0 or more"):
        Settings.load(max_credits=-1, environ={})


def test_the_readme_configuration_table_is_made_from_the_declaration() -> None:
    from pathlib import Path

    from octave_tools._settings import settings_table

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("-->\n", readme.index("<!-- settings-table")) + len("-->\n")
    end = readme.index("\n<!-- /settings-table -->")
    assert readme[start:end] == settings_table()
