"""Where audio files go, and how they are written: atomically, never half-done."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

__all__ = ["default_output_dir", "new_audio_path", "write_atomic"]


def default_output_dir() -> Path:
    """The user cache directory for octave-tools on this platform."""
    if sys.platform == "win32":
        root = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(root) / "octave-tools" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "octave-tools"
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "octave-tools"


def new_audio_path(output_dir: str | None, extension: str) -> Path:
    """A fresh, unique file path for a new clip in ``output_dir`` (or the default)."""
    directory = Path(output_dir).expanduser() if output_dir else default_output_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"speech-{uuid.uuid4().hex}.{extension}"


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, then rename.

    A reader never sees a partial file, and if ``path`` is a symlink the link itself
    is replaced: the write never lands outside ``path``'s folder.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
