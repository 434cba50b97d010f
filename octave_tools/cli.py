"""The `octave-tools` command: say, voices, usage, serve.

Exit codes: 0 success; 2 usage or invalid input; 3 configuration (no key, bad
setting, missing extra); 4 API or network failure; 5 spend limit reached;
1 anything unexpected; 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ._files import fetch_audio, write_atomic
from ._version import __version__
from .client import OctaveClient
from .errors import (
    APIError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    OctaveError,
)
from .voices import FORMATS

__all__ = ["main"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_API = 4
EXIT_BUDGET = 5
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
        "5 spend limit, 1 unexpected.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log retries (-v) or debug (-vv)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    say = sub.add_parser("say", help="speak TEXT and print the audio URL")
    say.add_argument("text", metavar="TEXT", help="the words to speak; '-' reads stdin")
    say.add_argument("--voice", help="a voice name (see `octave-tools voices`)")
    say.add_argument("--format", choices=FORMATS, help="audio format (default wav)")
    say.add_argument("--out", metavar="FILE", help="also download the audio to FILE")
    say.add_argument("--json", action="store_true", help="print the full result as JSON")
    say.add_argument("--model", help="TTS model id (default hume/octave-2)")
    say.add_argument("--timeout", type=float, help="total seconds for the call (default 60)")

    voices = sub.add_parser("voices", help="list the voices of the active engine")
    voices.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    voices.add_argument("--model", help="TTS model id (default hume/octave-2)")

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


def _read_text(arg: str) -> str:
    if arg != "-":
        return arg
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"stdin is not UTF-8 (byte {exc.start}); convert it with iconv first.", field="text"
        ) from None


def _format_for(args: argparse.Namespace) -> str | None:
    """--format, or the one --out's extension names; a contradiction is a usage error."""
    suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
    if args.format and suffix in FORMATS and suffix != args.format:
        raise InvalidInputError(
            f"--out ends in .{suffix} but --format is {args.format}; make them agree.",
            field="format",
        )
    return args.format or (suffix if suffix in FORMATS else None)


def _say(args: argparse.Namespace) -> int:
    text = _read_text(args.text)
    fmt = _format_for(args)
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        # Checked before the paid call, so a bad path never wastes one.
        if not out.parent.is_dir():
            raise InvalidInputError(
                f"--out folder {str(out.parent)!r} does not exist; create it first.", field="out"
            )
        if out.is_dir():
            raise InvalidInputError(
                f"--out {str(out)!r} is a folder; give a file name such as hello.wav.", field="out"
            )
        if not os.access(out.parent, os.W_OK):
            raise InvalidInputError(
                f"--out folder {str(out.parent)!r} is not writable; pick another.", field="out"
            )
    with OctaveClient(model=args.model, timeout=args.timeout) as client:
        speech = client.synthesize(text, voice=args.voice, format=fmt)
        saved = None
        if out is not None:
            data = fetch_audio(speech.audio_url, client.settings)
            saved = write_atomic(out, data)
    if args.json:
        record = speech.model_dump(mode="json")
        if saved is not None:
            record["file"] = str(saved)
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        print(speech.audio_url)
    if speech.engine == "local" or saved is not None:
        note = speech.summary()
        if saved is not None:
            note += f" Saved to {saved}."
        print(note, file=sys.stderr)
    return EXIT_OK


def _voices(args: argparse.Namespace) -> int:
    client = OctaveClient(model=args.model)
    catalogue = client.voice_catalogue()
    engine = client.active_engine()
    client.close()
    if catalogue is None:
        raise ConfigurationError(
            f"No voice catalogue is known for model {client.settings.model!r}; "
            "its voices are passed to the API unchecked."
        )
    if args.json:
        print(
            json.dumps(
                {
                    "engine": engine,
                    "model": catalogue.model,
                    "default": catalogue.default,
                    "voices": list(catalogue.voices),
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    print(f"Voices for {catalogue.model} (engine: {engine}); * marks the default:")
    for name in catalogue.voices:
        print(f"{'*' if name == catalogue.default else ' '} {name}")
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
        limits=HttpLimits(request_timeout=args.request_timeout, max_requests=args.max_requests),
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
            logging.basicConfig(
                stream=sys.stderr,
                level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                format="%(levelname)s %(name)s: %(message)s",
            )
        handler = {"say": _say, "voices": _voices, "usage": _usage, "serve": _serve}[args.command]
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
