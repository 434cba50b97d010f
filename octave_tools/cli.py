"""The `octave-tools` command: say, voices, models, usage, serve.

Exit codes: 0 success; 2 usage or invalid input; 3 configuration (no key, bad
setting, missing extra, a daily budget with an unusable ledger); 4 API or network
failure (also a failed --out download); 5 spend limit reached; 6 the --out file
could not be written (the call was made: its URL is still printed); 1 anything
unexpected; 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import (
    MAX_TEXT_CHARS,
    MODELS,
    APIError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    OctaveClient,
    OctaveError,
    __version__,
    configure_logging,
    write_atomic,
)
from .catalogue import ALL_FORMATS, models_table

__all__ = ["main"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_API = 4
EXIT_BUDGET = 5
EXIT_FILE = 6
EXIT_INTERRUPTED = 130

PROG = "octave-tools"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block; one line is the contract.
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Text-to-speech for agents and people: the AIML API (hume/octave-2).",
        epilog="Exit codes: 0 ok, 2 usage/invalid input, 3 configuration, 4 API/network, "
        "5 spend limit, 6 --out file not written (URL still printed), 1 unexpected.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log retries (-v) or debug (-vv)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    say = sub.add_parser("say", help="speak TEXT and print the audio URL")
    say.add_argument("text", metavar="TEXT", help="the words to speak; '-' reads stdin")
    say.add_argument("--voice", help="a voice name (see `octave-tools voices`)")
    say.add_argument(
        "--format", choices=ALL_FORMATS, help="audio format (default: the model's; wav for Octave)"
    )
    say.add_argument(
        "--out",
        metavar="FILE",
        help="also download the audio to FILE; '-' writes the audio bytes to stdout "
        "(the URL or JSON then goes to stderr)",
    )
    say.add_argument("--json", action="store_true", help="print the full result as JSON")
    say.add_argument("--model", help="TTS model id (default hume/octave-2; see `models`)")
    say.add_argument("--speed", type=float, help="speaking rate, 1.0 normal (models that have one)")
    say.add_argument("--timeout", type=float, help="total seconds for the call (default 60)")

    voices = sub.add_parser("voices", help="list the voices of the active engine")
    voices.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    voices.add_argument("--model", help="TTS model id (default hume/octave-2)")

    models = sub.add_parser("models", help="list every model, its voices, formats and limits")
    models.add_argument("--json", action="store_true", help="print the catalogue as JSON")

    usage = sub.add_parser("usage", help="what the ledger says was spent")
    usage.add_argument("--since", default="7d", help="period: 7d, 24h, 30m (default 7d)")
    usage.add_argument(
        "--by", choices=("day", "model", "voice", "engine"), default="day", help="grouping"
    )
    usage.add_argument("--json", action="store_true", help="print the report as JSON")

    _add_serve_arguments(
        sub.add_parser("serve", help="run the MCP server (stdio or streamable HTTP)")
    )
    return parser


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio (default) or http: streamable HTTP at /mcp",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free one)")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback HTTP bind without OCTAVE_TOOLS_SERVER_TOKEN",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="server log level (logs go to stderr)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="HTTP: close a connection that sends no whole request within this (default 30)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=64,
        metavar="N",
        help="HTTP: requests handled at once; more get 503 (default 64)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=512,
        metavar="N",
        help="HTTP: connections open at once; a new one replaces the longest idle one "
        "(default 512, fewer under a low ulimit -n)",
    )


# Bytes read from stdin at most: enough for MAX_TEXT_CHARS + 1 characters of UTF-8.
_STDIN_BYTES = 4 * (MAX_TEXT_CHARS + 1)
_STDIN_CHUNK = 1 << 16


def _read_text(arg: str) -> str:
    if arg != "-":
        return arg
    # Bounded: a stream that never ends (`yes |`) is refused, not buffered whole.
    stream = sys.stdin.buffer
    chunks: list[bytes] = []
    size = 0
    while size < _STDIN_BYTES:
        chunk = stream.read(min(_STDIN_CHUNK, _STDIN_BYTES - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size >= _STDIN_BYTES:
        raise InvalidInputError(
            f"stdin holds more than the {MAX_TEXT_CHARS:,}-character limit; shorten the "
            "text or split it into several calls.",
            field="text",
        )
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"stdin is not UTF-8 (byte {exc.start}); convert it with iconv first.", field="text"
        ) from None


def _format_for(args: argparse.Namespace) -> str | None:
    """--format, or the one --out's extension names; a contradiction is a usage error."""
    suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
    if args.format and suffix in ALL_FORMATS and suffix != args.format:
        raise InvalidInputError(
            f"--out ends in .{suffix} but --format is {args.format}; make them agree.",
            field="format",
        )
    return args.format or (suffix if suffix in ALL_FORMATS else None)


def _check_out(out: Path) -> None:
    """Refuse an --out target that cannot (or must not) be replaced by a file."""
    if not out.parent.is_dir():
        raise InvalidInputError(
            f"--out folder {str(out.parent)!r} does not exist; create it first.", field="out"
        )
    if out.is_dir():
        raise InvalidInputError(
            f"--out {str(out)!r} is a folder; give a file name such as hello.wav.", field="out"
        )
    try:
        mode = out.stat().st_mode  # through a link: a link to a file is fine
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InvalidInputError(
            f"--out {str(out)!r} cannot be checked ({exc.strerror}); pick another file.",
            field="out",
        ) from None
    if mode is not None and not stat.S_ISREG(mode):
        # The audio is renamed into place: a device, pipe or socket would be replaced.
        raise InvalidInputError(
            f"--out {str(out)!r} exists and is not a regular file (a device, pipe or "
            "socket); give a file name, or --out - to write the audio to stdout.",
            field="out",
        )
    if _system_folder(out.parent):
        # /dev/stdout may link to a regular file (a redirect); it must never be replaced.
        raise InvalidInputError(
            f"--out {str(out)!r} is in a system device folder; give a file name, or "
            "--out - to write the audio to stdout.",
            field="out",
        )
    if not os.access(out.parent, os.W_OK):
        raise InvalidInputError(
            f"--out folder {str(out.parent)!r} is not writable; pick another.", field="out"
        )


def _system_folder(folder: Path) -> bool:
    """Whether ``folder`` is /dev itself, or inside /proc or /sys (never a place for audio)."""
    if os.name != "posix":
        return False
    try:
        real = folder.resolve()
    except OSError:
        return False
    return real == Path("/dev") or any(
        real == Path(root) or Path(root) in real.parents for root in ("/proc", "/sys")
    )


_PAID = "The call was made and its audio URL is printed above"


def _say(args: argparse.Namespace) -> int:
    if args.out is not None and not args.out.strip():
        raise InvalidInputError(
            "--out is empty; give a file name such as hello.wav, or - for stdout.", field="out"
        )
    text = _read_text(args.text)
    fmt = _format_for(args)
    to_stdout = args.out == "-"
    out = Path(args.out).expanduser() if args.out is not None and not to_stdout else None
    if out is not None:
        _check_out(out)  # before the paid call, so a bad path never wastes one
    saved: Path | None = None
    failure: tuple[str, int] | None = None
    with OctaveClient(model=args.model, timeout=args.timeout) as client:
        speech = client.synthesize(text, voice=args.voice, format=fmt, speed=args.speed)
        if args.out is not None:
            target = "-" if out is None else str(out)
            try:
                data = client.download(speech)
            except OctaveError as exc:
                failure = (
                    f"{exc.message} {_PAID}; --out {target} was not written.",
                    _exit_code(exc),
                )
            else:
                if out is None:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                else:
                    try:
                        _check_out(out)  # again: it may have changed during the call
                        saved = write_atomic(out, data)
                    except InvalidInputError as exc:
                        failure = (f"{exc.message} {_PAID}.", EXIT_FILE)
                    except OSError as exc:
                        failure = (
                            f"could not write --out {target} ({exc.strerror or exc}). {_PAID}.",
                            EXIT_FILE,
                        )
    # With --out -, stdout carries only the audio: the URL or JSON goes to stderr.
    info = sys.stderr if to_stdout else sys.stdout
    if args.json:
        record = speech.model_dump(mode="json")
        if saved is not None:
            record["file"] = str(saved)
        print(json.dumps(record, indent=2, ensure_ascii=False), file=info)
    else:
        print(speech.audio_url, file=info)
    if speech.engine == "local" or args.out is not None:
        note = speech.summary()
        if saved is not None:
            note += f" Saved to {saved}."
        elif to_stdout and failure is None:
            note += " Audio written to stdout."
        print(note, file=sys.stderr)
    if failure is not None:
        message, code = failure
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return code
    return EXIT_OK


def _voices(args: argparse.Namespace) -> int:
    with OctaveClient(model=args.model) as client:
        listing = client.voices()
        engine = client.active_engine()
    if not listing.voices and listing.model not in MODELS:
        raise ConfigurationError(
            f"No voice catalogue is known for model {listing.model!r}; "
            "its voices are passed to the API unchecked."
        )
    if args.json:
        record = {"engine": engine, **listing.model_dump()}
        print(json.dumps(record, indent=2, ensure_ascii=False))
    elif listing.voices:
        print("\n".join(listing.lines(engine)))
    else:
        print(f"{listing.model} takes any voice id; it names no voices of its own.")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    if args.json:
        records = [spec.describe() for spec in MODELS.values()]
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        print(models_table())
    return EXIT_OK


def _usage(args: argparse.Namespace) -> int:
    with OctaveClient() as client:
        report = client.usage(since=args.since, by=args.by)
    print(report.model_dump_json(indent=2) if args.json else report.table())
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    try:
        from ._mcp_http import HttpLimits, run_server
    except ImportError as exc:
        if exc.name and (exc.name == "mcp" or exc.name.startswith(("mcp.", "uvicorn"))):
            raise ConfigurationError(
                "The MCP server needs the mcp extra: pip install 'octave-tools[mcp]'."
            ) from None
        raise
    run_server(
        transport=args.transport,
        host=args.host,
        port=args.port,
        insecure_no_auth=args.insecure_no_auth,
        log_level=args.log_level,
        limits=HttpLimits(
            request_timeout=args.request_timeout,
            max_requests=args.max_requests,
            max_connections=args.max_connections,
        ),
    )
    return EXIT_OK


def _exit_code(exc: OctaveError) -> int:
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG
    if isinstance(exc, BudgetExceededError):
        return EXIT_BUDGET
    if isinstance(exc, APIError):
        return EXIT_API
    return EXIT_UNEXPECTED


def _guarded(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; any failure becomes one line on stderr and its exit code."""
    try:
        return body()
    except _UsageError as exc:
        message, code = str(exc), EXIT_USAGE
    except OctaveError as exc:
        message, code = exc.message, _exit_code(exc)
    except KeyboardInterrupt:
        message, code = "interrupted", EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        message, code = f"{exc.strerror or exc} ({exc.filename or 'I/O'})", EXIT_UNEXPECTED
    except Exception as exc:  # the CLI promises no traceback, whatever happens
        logging.getLogger("octave_tools").debug("unexpected error", exc_info=True)
        message = f"unexpected {type(exc).__name__}; run with -vv and report it"
        code = EXIT_UNEXPECTED
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (never raises)."""
    parser = _build_parser()

    def body() -> int:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.verbose:
            # Filtered: at -vv httpcore logs response headers verbatim, echoed key and all.
            configure_logging(
                stream=sys.stderr,
                level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                format="%(levelname)s %(name)s: %(message)s",
            )
        handler = {
            "say": _say,
            "voices": _voices,
            "models": _models,
            "usage": _usage,
            "serve": _serve,
        }[args.command]
        return handler(args)

    return _guarded(PROG, body)


def serve_main(argv: Sequence[str] | None = None, prog: str = "octave-tools-mcp") -> int:
    """``octave-tools serve`` as a command of its own (the ``octave-tools-mcp`` script)."""
    parser = _Parser(
        prog=prog,
        description="Run the octave-tools MCP server (text-to-speech tools for MCP clients).",
    )
    _add_serve_arguments(parser)
    return _guarded(prog, lambda: _serve(parser.parse_args(argv)))


def main() -> NoReturn:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
