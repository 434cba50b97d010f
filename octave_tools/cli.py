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
import math
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

from . import (
    MODELS,
    APIError,
    BudgetExceededError,
    ConfigurationError,
    InvalidInputError,
    OctaveClient,
    OctaveError,
    Settings,
    Speech,
    __version__,
    configure_logging,
    write_atomic,
)
from ._script import Script, parse_cast, parse_script
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

    say = sub.add_parser(
        "say",
        help="speak TEXT (or --file, or a --script dialogue) and print the audio URL",
        description="Speak TEXT, the text in --file, or the dialogue in --script, and print "
        "the URL of one audio file. Long text is spoken in parts and joined; a bar on stderr "
        "shows the parts when it is a terminal.",
    )
    say.add_argument("text", metavar="TEXT", nargs="?", help="the words to speak; '-' reads stdin")
    say.add_argument(
        "--file", metavar="PATH", help="speak the UTF-8 text in PATH ('-' reads stdin)"
    )
    say.add_argument(
        "--script",
        metavar="FILE",
        help="speak a dialogue: 'Speaker: words' lines, speakers cast as voices by --cast or "
        "by front matter between '---' lines at the top ('-' reads stdin)",
    )
    say.add_argument(
        "--cast",
        metavar="SPEAKER=VOICE,...",
        action="append",
        help='voices of the --script speakers, e.g. "Host=Ava Song,Guest=Vince Douglas" '
        "(wins over the front matter; may be repeated)",
    )
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
        "--by",
        choices=("day", "model", "voice", "engine", "job", "key"),
        default="day",
        help="grouping",
    )
    usage.add_argument("--json", action="store_true", help="print the report as JSON")

    _add_serve_arguments(
        sub.add_parser("serve", help="run the MCP server (stdio or streamable HTTP)")
    )

    keys = sub.add_parser("keys", help="client keys for a shared HTTP server")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser)
    add = keys_sub.add_parser("add", help="make a key for NAME and print it once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--max-credits-per-day", type=float, metavar="N", help="daily credit budget")
    add.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    add.add_argument("--models", metavar="M,...", help="the only models this key may use")
    add.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h (default: never)")
    listing = keys_sub.add_parser("list", help="names, prefixes, limits, use (never the keys)")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    for action, text in (("revoke", "stop NAME's key"), ("rotate", "a new key for NAME")):
        keys_sub.add_parser(action, help=text).add_argument("name", metavar="NAME")
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
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="server log lines as text (default) or one JSON object per line",
    )
    parser.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="HTTP: serve /metrics on a listener of its own, without auth (default 127.0.0.1)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="HTTP: port of that metrics listener (0: any free one); else /metrics is on the "
        "main port behind the server token",
    )


_READ_CHUNK = 1 << 16
_SCRIPT_SLACK = 1 << 20


def _read_bounded(stream: BinaryIO, name: str, limit: int, slack: int = 0) -> str:
    """UTF-8 text from ``stream``, refused once it holds more than ``limit`` characters'
    worth of bytes plus ``slack`` (so a stream that never ends, `yes |`, is never
    buffered whole)."""
    most = 4 * (limit + 1) + slack  # bytes: enough for limit + 1 characters of UTF-8
    chunks: list[bytes] = []
    size = 0
    while size < most:
        chunk = stream.read(min(_READ_CHUNK, most - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size >= most:
        raise InvalidInputError(
            f"{name} holds more than the {limit:,}-character limit of one call; shorten it, "
            "or raise OCTAVE_TOOLS_MAX_TEXT_CHARS.",
            field="text",
        )
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{name} is not UTF-8 (byte {exc.start}); convert it with iconv first.", field="text"
        ) from None


def _read_source(path: str, limit: int, slack: int = 0) -> str:
    """The text of ``path``, or of stdin for '-'."""
    if path == "-":
        return _read_bounded(sys.stdin.buffer, "stdin", limit, slack)
    try:
        with open(path, "rb") as stream:
            return _read_bounded(stream, path, limit, slack)
    except FileNotFoundError:
        raise InvalidInputError(
            f"{path!r} does not exist; give the path of a text file.", field="file"
        ) from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"{path!r} is a folder; give the path of a text file.", field="file"
        ) from None
    except PermissionError:
        raise InvalidInputError(
            f"{path!r} cannot be read (permission denied).", field="file"
        ) from None


def _check_sources(args: argparse.Namespace) -> None:
    """Exactly one of TEXT, --file and --script, and only the options that go with it."""
    given = [
        name
        for name, value in (("TEXT", args.text), ("--file", args.file), ("--script", args.script))
        if value is not None
    ]
    if len(given) != 1:
        which = "none" if not given else " and ".join(given)
        raise _UsageError(
            f"say takes one of TEXT, --file or --script (got {which}); see {PROG} say --help"
        )
    if args.cast is not None and args.script is None:
        raise _UsageError("--cast casts the speakers of a --script; give the script too")
    if args.script is not None:
        for option, value in (("--voice", args.voice), ("--speed", args.speed)):
            if value is not None:
                raise _UsageError(
                    f"{option} does not apply to --script: each speaker's voice comes from "
                    "--cast or the script's front matter"
                )


class _ProgressBar:
    """``on_progress`` for the CLI: a bar on stderr for a call spoken in parts.

    Only when stderr is a terminal (never in a pipe or a log), and only for two parts or
    more. Drawn by ``rich`` when it is installed (the ``cli`` extra); a plain counter
    otherwise.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._on = stream.isatty()
        self._lock = threading.Lock()
        self._rich: Any = None
        self._task: Any = None
        self._plain = False

    def __call__(self, done: int, total: int) -> None:
        if not self._on or total <= 1:
            return
        with self._lock:
            if self._rich is None and not self._plain:
                self._start(total)
            if self._rich is not None:
                self._rich.update(self._task, completed=done, total=total)
            else:
                print(f"\rSpeaking: {done} of {total} parts", end="", file=self._stream, flush=True)

    def _start(self, total: int) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            self._plain = True
            return
        self._rich = Progress(
            TextColumn("Speaking"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("parts"),
            TimeElapsedColumn(),
            console=Console(file=self._stream),
        )
        self._rich.start()
        self._task = self._rich.add_task("parts", total=total)

    def close(self) -> None:
        with self._lock:
            if self._rich is not None:
                self._rich.stop()
                self._rich = None
            elif self._plain:
                print(file=self._stream, flush=True)
                self._plain = False


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


def _read_input(args: argparse.Namespace, limit: int) -> str | Script:
    """What `say` speaks: TEXT, the text of --file, or the --script (cast checked)."""
    if args.script is not None:
        source = "stdin" if args.script == "-" else args.script
        # Room for what is not spoken: speakers, front matter, comments (the core counts
        # the spoken characters against the limit).
        script = parse_script(_read_source(args.script, limit, _SCRIPT_SLACK), source=source)
        script.dialogue(parse_cast(args.cast or ()))  # every speaker has a voice
        return script
    path = args.file if args.file is not None else args.text if args.text == "-" else None
    return args.text if path is None else _read_source(path, limit)


def _speak(
    client: OctaveClient, what: str | Script, args: argparse.Namespace, fmt: str | None
) -> Speech:
    """The one call `say` makes, with a progress bar while its parts are spoken."""
    bar = _ProgressBar(sys.stderr)
    try:
        if isinstance(what, str):
            return client.synthesize(
                what, voice=args.voice, format=fmt, speed=args.speed, on_progress=bar
            )
        lines = what.dialogue(parse_cast(args.cast or ()))
        try:
            return client.synthesize_dialogue(lines, format=fmt, on_progress=bar)
        except InvalidInputError as exc:
            raise _in_script(exc, what) from None
    finally:
        bar.close()


_PAID = "The call was made and its audio URL is printed above"


def _say(args: argparse.Namespace) -> int:
    _check_sources(args)
    if args.out is not None and not args.out.strip():
        raise InvalidInputError(
            "--out is empty; give a file name such as hello.wav, or - for stdout.", field="out"
        )
    fmt = _format_for(args)
    to_stdout = args.out == "-"
    out = Path(args.out).expanduser() if args.out is not None and not to_stdout else None
    saved: Path | None = None
    failure: tuple[str, int] | None = None
    with OctaveClient(model=args.model, timeout=args.timeout) as client:
        what = _read_input(args, client.settings.max_text_chars)
        if out is not None:
            _check_out(out)  # before the paid call, so a bad path never wastes one
        speech = _speak(client, what, args, fmt)
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


_CORE_LINE = re.compile(r"line (\d+): ")


def _in_script(exc: InvalidInputError, script: Script) -> InvalidInputError:
    """The core's "line 3: ..." about a dialogue line, said as the script's own line."""
    found = _CORE_LINE.match(exc.message)
    if found is None or not 1 <= int(found[1]) <= len(script.lines):
        return exc
    line = script.lines[int(found[1]) - 1]
    where = f"{script.source} line {line.line} ({line.speaker}): "
    return InvalidInputError(where + exc.message[found.end() :], field=exc.field)


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
        log_format=args.log_format,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    from .keys import open_key_book

    if args.keys_command is None:
        raise _UsageError("keys needs an action: add, list, revoke or rotate (see keys --help)")
    book = open_key_book(Settings.load())
    try:
        return _key_action(args, book)
    finally:
        book.close()


def _key_action(args: argparse.Namespace, book: Any) -> int:
    from .keys import parse_duration, reject_unknown_models

    if args.keys_command == "add":
        for flag, number in (
            ("--max-credits-per-day", args.max_credits_per_day),
            ("--rpm", args.rpm),
        ):
            if number is not None and not (number > 0 and math.isfinite(number)):
                raise _UsageError(f"{flag} must be more than 0; got {number}")
        models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
        key = book.add(
            args.name,
            max_credits_per_day=args.max_credits_per_day,
            rpm=args.rpm,
            models=reject_unknown_models(models),
            expires_in=parse_duration(args.expires) if args.expires else None,
        )
        print(key)
        print(f"Key {args.name!r} made. It is shown this once; store it now.", file=sys.stderr)
    elif args.keys_command == "rotate":
        print(book.rotate(args.name))
        print(
            f"New key for {args.name!r}; the old one stops working within seconds.", file=sys.stderr
        )
    elif args.keys_command == "revoke":
        book.revoke(args.name)
        print(
            f"Key {args.name!r} revoked; every replica refuses it within seconds.", file=sys.stderr
        )
    else:
        with OctaveClient() as client:
            report = client.usage_report("24h", "key")
        spent = {group.key: group.credits for group in report.groups}
        _print_keys(book.list(), spent, as_json=args.json)
    return EXIT_OK


def _print_keys(records: Sequence[Any], spent: dict[str, float], *, as_json: bool) -> None:
    import time as _time

    def when(ts: float | None) -> str | None:
        return None if ts is None else _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(ts))

    rows = [
        {
            "name": r.name,
            "prefix": r.prefix,
            "max_credits_per_day": r.max_credits_per_day,
            "rpm": r.rpm,
            "models": list(r.models),
            "created": when(r.created),
            "expires": when(r.expires),
            "revoked": when(r.revoked),
            "last_used": when(r.last_used),
            "spent_24h": spent.get(r.name, 0.0),
        }
        for r in records
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'name':<20} {'prefix':<17} {'credits/day':>12} {'spent 24h':>12} {'rpm':>5}  "
        "models  state"
    )
    for row in rows:
        state = (
            "revoked"
            if row["revoked"]
            else f"expires {row['expires']}"
            if row["expires"]
            else "active"
        )
        budget = f"{row['max_credits_per_day']:,.0f}" if row["max_credits_per_day"] else "-"
        print(
            f"{row['name']:<20} {row['prefix']:<17} {budget:>12} {row['spent_24h']:>12,.0f} "
            f"{row['rpm'] or '-':>5}  {','.join(row['models']) or 'all'}  {state}; "
            f"last used {row['last_used'] or 'never'}"
        )


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
            "keys": _keys,
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
