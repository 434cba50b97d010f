"""Importing the core pulls in neither face's dependencies."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_neither_langchain_nor_mcp() -> None:
    loaded = _modules_after("import octave_tools, octave_tools.cli, octave_tools.testing")
    assert not {
        m for m in loaded if m.split(".")[0] in {"langchain", "langchain_core", "mcp", "langgraph"}
    }


def test_public_names() -> None:
    import octave_tools
    from octave_tools import client, errors, models, voices

    for name, defined in {
        "OctaveClient": client.OctaveClient,
        "AsyncOctaveClient": client.AsyncOctaveClient,
        "Speech": models.Speech,
        "VOICES": voices.VOICES,
        "DEFAULT_VOICE": voices.DEFAULT_VOICE,
        "OctaveError": errors.OctaveError,
    }.items():
        assert name in octave_tools.__all__
        assert getattr(octave_tools, name) is defined
