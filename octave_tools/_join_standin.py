"""TEMPORARY stand-in for h-join's ``_join`` (WAV only), removed when it lands."""

from __future__ import annotations

import os
import uuid
import wave
from collections.abc import Sequence
from pathlib import Path

from .errors import InvalidInputError, UnexpectedResponseError


def check_joinable(fmt: str) -> None:
    if fmt not in ("wav",):
        raise InvalidInputError(
            f"Long text in {fmt} cannot be joined yet; use wav.", field="format"
        )


def join_files(
    parts: Sequence[Path], fmt: str, target: Path, *, pause_ms: int = 0, pcm_rate: int = 24000
) -> None:
    check_joinable(fmt)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    params = None
    try:
        with wave.open(str(tmp), "wb") as out:
            for i, path in enumerate(parts):
                with wave.open(str(path), "rb") as w:
                    p = (w.getnchannels(), w.getsampwidth(), w.getframerate())
                    if params is None:
                        params = p
                        out.setnchannels(p[0])
                        out.setsampwidth(p[1])
                        out.setframerate(p[2])
                    elif p != params:
                        raise UnexpectedResponseError(
                            f"part {i + 1} is {p[2]} Hz, the others {params[2]} Hz",
                            status_code=200,
                            body_excerpt="",
                        )
                    if i and pause_ms:
                        out.writeframes(bytes(p[0] * p[1] * (p[2] * pause_ms // 1000)))
                    while chunk := w.readframes(65536):
                        out.writeframes(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
