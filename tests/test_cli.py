"""The octave-tools command: output, files, exit codes, and no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import cli, cli_process, subprocess_env

from octave_tools.testing import FakeAIMLAPI

pytestmark = pytest.mark.usefixtures("api_env")


def test_say_prints_only_the_url(capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI) -> None:
    code, out, err = cli(capsys, "say", "Hello there", "--voice", "ava song")
    assert code == 0
    url = out.strip()
    assert api_env.issued == {url: "Hello there"}
    assert err == ""
    assert api_env.tts_requests[0].json["voice"] == "Ava Song"


def test_say_json_prints_the_speech_record(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI
) -> None:
    code, out, _ = cli(capsys, "say", "Hi", "--format", "mp3", "--json")
    record = json.loads(out)
    assert code == 0
    assert record["audio_url"] in api_env.issued
    assert {
        k: record[k] for k in ("format", "voice", "model", "characters", "credits_used", "engine")
    } == {
        "format": "mp3",
        "voice": "Vince Douglas",
        "model": "hume/octave-2",
        "characters": 2,
        "credits_used": 250,
        "engine": "aimlapi",
    }


def test_say_out_downloads_atomically_and_infers_the_format(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "hello.mp3"
    code, _out, err = cli(capsys, "say", "Hi there", "--out", str(target))
    assert code == 0
    assert api_env.tts_requests[0].json["format"] == "mp3"
    assert target.read_bytes().startswith(b"ID3")
    assert f"Saved to {target}." in err
    assert [p.name for p in target.parent.iterdir()] == ["hello.mp3"]  # no temp file left


def test_say_out_replaces_a_symlink_instead_of_writing_through_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"precious")
    inside = tmp_path / "dir"
    inside.mkdir()
    link = inside / "hello.wav"
    link.symlink_to(outside)
    assert cli(capsys, "say", "Hi", "--out", str(link))[0] == 0
    assert outside.read_bytes() == b"precious"
    assert not link.is_symlink()
    assert link.read_bytes().startswith(b"RIFF")


def test_say_out_contradicting_format_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    code, out, err = cli(capsys, "say", "Hi", "--format", "wav", "--out", str(tmp_path / "a.mp3"))
    assert (code, out) == (2, "")
    assert err == "octave-tools: error: --out ends in .mp3 but --format is wav; make them agree.\n"
    assert api_env.requests == []


def test_say_out_into_a_missing_folder_fails_before_spending(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "say", "Hi", "--out", str(tmp_path / "nope" / "a.wav"))
    assert code == 2
    assert "does not exist; create it first." in err
    assert api_env.requests == []


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["say", ""], 2, "text is empty"),
        (["say", "hi", "--voice", "Ava Sung"], 2, "Did you mean 'Ava Song'?"),
        (["say", "hi", "--format", "ogg"], 2, "argument --format: invalid choice: 'ogg'"),
        (["say"], 2, "say takes one of TEXT, --file or --script (got none)"),
        (["fly"], 2, "invalid choice: 'fly'"),
    ],
)
def test_usage_and_validation_errors_exit_2_on_one_line(
    capsys: pytest.CaptureFixture[str],
    api_env: FakeAIMLAPI,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    got, out, err = cli(capsys, *argv)
    assert (got, out) == (code, "")
    assert err.startswith("octave-tools: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert api_env.requests == []


def test_missing_key_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIMLAPI_API_KEY")
    code, _, err = cli(capsys, "say", "hi")
    assert code == 3
    assert err.startswith("octave-tools: error: No AIML API key. Set AIMLAPI_API_KEY")


def test_bad_setting_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_TIMEOUT", "soon")
    code, _, err = cli(capsys, "say", "hi")
    assert code == 3
    assert "OCTAVE_TOOLS_TIMEOUT must be a positive number" in err


@pytest.mark.parametrize(
    ("status", "fragment"), [(401, "Check AIMLAPI_API_KEY"), (503, "(503: Error 503)")]
)
def test_api_failures_exit_4(
    capsys: pytest.CaptureFixture[str],
    api_env: FakeAIMLAPI,
    status: int,
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_MAX_RETRIES", "0")
    api_env.fail(status)
    code, out, err = cli(capsys, "say", "hi")
    assert (code, out) == (4, "")
    assert fragment in err


def test_voices_lists_the_catalogue_with_the_default_marked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "voices")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "Voices for hume/octave-2 (engine: aimlapi); * marks the default:"
    assert lines[1] == "* Vince Douglas"
    assert lines[2] == "  Male English Actor"
    assert len(lines) == 28


def test_voices_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "voices", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["engine"], data["model"], data["default"], len(data["voices"])) == (
        "aimlapi",
        "hume/octave-2",
        "Vince Douglas",
        27,
    )


def test_console_script_reads_stdin_for_dash(api_env: FakeAIMLAPI) -> None:
    proc = cli_process(
        "say", "-", input="Ünïcode from stdin 🎙️\n".encode(), env=subprocess_env(api_env)
    )
    assert proc.returncode == 0, proc.stderr
    assert api_env.issued[proc.stdout.decode().strip()] == "Ünïcode from stdin 🎙️\n"


def test_no_traceback_and_no_key_at_any_verbosity(api_env: FakeAIMLAPI) -> None:
    key = "sk-cli-planted-5e8f"
    for verbosity in ([], ["-v"], ["-vv"]):
        for fault in ("drop", "401"):
            if fault == "drop":
                api_env.drop(times=3)
            else:
                api_env.fail(401, message=f"bad key {key}")
            proc = cli_process(
                *verbosity,
                "say",
                "hi",
                env=subprocess_env(api_env, AIMLAPI_API_KEY=key, OCTAVE_TOOLS_MAX_RETRIES="2"),
                text=True,
            )
            assert proc.returncode == 4
            assert "Traceback" not in proc.stderr
            assert key not in proc.stderr + proc.stdout
            assert proc.stderr.strip().splitlines()[-1].startswith("octave-tools: error: ")


def test_say_out_that_is_a_folder_fails_before_spending(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "say", "Hi", "--out", str(tmp_path))
    assert code == 2
    assert "is a folder; give a file name" in err
    assert api_env.requests == []
