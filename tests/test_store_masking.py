"""Store passwords are masked in every spelling libpq accepts, whatever their length
(issue 22, item 8).

Each spelling is built, then read back by libpq itself (psycopg's ``conninfo_to_dict``
calls ``PQconninfoParse``) to show it is one libpq takes as that password; the masked
form must be exactly the string with ``***`` in the password's place.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from harness import api_options
from hypothesis import given, settings
from hypothesis import strategies as st

from octave_tools import ConfigurationError, OctaveClient
from octave_tools._redact import RedactingFilter, redact, redact_url, scrub, url_secrets
from octave_tools._settings import Settings
from octave_tools.testing import FakeAIMLAPI

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

# Any text libpq can hold (no NUL), from one character up.
passwords = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=24,
)
# "password" with any of its letters percent-encoded (pass%77ord, %70assword, ...).
encodings = st.lists(st.booleans(), min_size=8, max_size=8)


def _key(which: list[bool], word: str = "password") -> str:
    return "".join(f"%{ord(c):02X}" if enc else c for c, enc in zip(word, which, strict=True))


def _quoted(password: str) -> str:
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _escaped(password: str) -> str:
    """An unquoted conninfo value: every blank, backslash and quote escaped."""
    return "".join("\\" + c if c.isspace() or c in "\\'" else c for c in password)


def _check(url: str, masked: str, password: str, field: str = "password") -> None:
    assert conninfo_to_dict(url)[field] == password  # libpq reads it as this password
    assert redact_url(url) == masked
    assert password in url_secrets(url)
    assert scrub(password, url) == "***"  # a driver message quoting it


@settings(max_examples=150, deadline=None)
@given(password=passwords)
def test_a_password_in_the_userinfo_is_masked(password: str) -> None:
    url = f"postgresql://app:{quote(password, safe='')}@db.internal:5432/octave"
    _check(url, "postgresql://app:***@db.internal:5432/octave", password)


@settings(max_examples=150, deadline=None)
@given(password=passwords, which=encodings)
def test_a_password_query_parameter_is_masked_however_its_name_is_percent_encoded(
    password: str, which: list[bool]
) -> None:
    key = _key(which)
    value = quote(password, safe="")
    url = f"postgresql://db.internal/octave?user=app&{key}={value}&sslmode=prefer"
    _check(url, f"postgresql://db.internal/octave?user=app&{key}=***&sslmode=prefer", password)


@settings(max_examples=100, deadline=None)
@given(password=passwords)
def test_the_client_keys_sslpassword_is_masked_too(password: str) -> None:
    url = f"postgresql://db.internal/octave?sslpassword={quote(password, safe='')}"
    _check(url, "postgresql://db.internal/octave?sslpassword=***", password, "sslpassword")


@settings(max_examples=150, deadline=None)
@given(password=passwords, quoted=st.booleans(), blanks=st.sampled_from(["", " ", "  "]))
def test_a_password_in_a_key_value_connection_string_is_masked(
    password: str, quoted: bool, blanks: str
) -> None:
    value = _quoted(password) if quoted else _escaped(password)
    url = f"host=db.internal port=5432 password{blanks}={blanks}{value} dbname=octave"
    _check(url, f"host=db.internal port=5432 password{blanks}={blanks}*** dbname=octave", password)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db/octave?PASSWORD=Zq9",  # not libpq's spelling: masked all the same
        "postgresql://db/octave?Pass%57ord=Zq9",
        "host=db PassWord=Zq9",
    ],
)
def test_spellings_libpq_refuses_are_masked_anyway(url: str) -> None:
    assert "Zq9" not in redact_url(url)
    assert "Zq9" in url_secrets(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1:1/octave?user=app&pass%77ord=Zq9",
        "postgresql://127.0.0.1:1/octave?user=app&password=Zq9%26x",
        "host=127.0.0.1 port=1 user=app password='Zq9 x' dbname=octave",
        "host=127.0.0.1 port=1 user=app password=Zq9\\ x dbname=octave",
        "postgresql://app:Zq9@127.0.0.1:1/octave",
    ],
)
def test_a_short_password_never_reaches_an_error_or_a_log_line(
    fake_aimlapi: FakeAIMLAPI, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = OctaveClient(**api_options(fake_aimlapi, store_url=url, max_credits_per_day=10**6))

    with pytest.raises(ConfigurationError) as caught:
        client.synthesize("Hello")

    assert "Zq9" not in str(caught.value)
    assert "OCTAVE_TOOLS_STORE_URL" in str(caught.value)
    assert fake_aimlapi.requests == []
    # Loaded once, the password is masked in every log record a handler of ours writes,
    # however short (as a token of its own: "Zq9x" elsewhere is left alone).
    record = logging.LogRecord(
        "psycopg", logging.WARNING, __file__, 1, "auth %s: Zq9", ("x",), None
    )
    RedactingFilter().filter(record)
    assert record.getMessage() == "auth x: **********"
    assert redact("Zq9x") == "Zq9x"


def test_a_short_store_password_is_registered_when_the_settings_are_read() -> None:
    Settings.load(store_url="postgresql://app:k7@db/octave", cache_url="redis://:r4@cache:6379/0")

    assert redact("password k7 and r4.") == "password ********** and **********."
