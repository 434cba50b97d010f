"""Stage the Claude Desktop bundle (.mcpb) of octave-tools; ``mcpb pack`` zips the result.

    python packaging/build_mcpb.py STAGE_DIR [--lib pip|env]
    npx @anthropic-ai/mcpb validate STAGE_DIR/manifest.json
    npx @anthropic-ai/mcpb pack STAGE_DIR octave-tools.mcpb

The bundle is a ``python`` server (manifest.json): ``server/main.py`` and, in
``server/lib``, octave-tools with the ``mcp`` extra and every dependency. Some of those
are compiled (pydantic-core), so a bundle runs on the platform and Python version it was
built with; the staged manifest says which (``compatibility``).

``--lib pip`` (the default, for releases) installs them with ``pip install --target``
from the package index. ``--lib env`` copies the ones installed in the running
environment instead (offline; what the tests use), with octave-tools from this checkout.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "packaging" / "mcpb"
PLATFORMS = {"Darwin": "darwin", "Linux": "linux", "Windows": "win32"}


def _version() -> str:
    text = (ROOT / "octave_tools" / "_version.py").read_text(encoding="utf-8")
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    if found is None:
        raise SystemExit("octave_tools/_version.py names no __version__")
    return found.group(1)


def _requirements(name: str, extras: tuple[str, ...], seen: set[str]) -> None:
    """Every distribution ``name[extras]`` needs here, by normalised name, into ``seen``."""
    from packaging.requirements import Requirement  # a dev tool: packaging is there

    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen and not extras:
        return
    seen.add(key)
    for line in metadata.requires(name) or []:
        req = Requirement(line)
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": extra}) for extra in (*extras, "")
        ):
            continue
        _requirements(req.name, tuple(req.extras), seen)


def _copy_installed(lib: Path) -> None:
    """The distributions octave-tools[mcp] needs, copied from this environment."""
    needed: set[str] = set()
    _requirements("octave-tools", ("mcp",), needed)
    needed.discard("octave-tools")
    for key in sorted(needed):
        dist = metadata.distribution(key)
        base = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file))).resolve()
            if not source.is_relative_to(base) or "__pycache__" in source.parts:
                continue  # scripts in bin/, caches
            target = lib / source.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(
        ROOT / "octave_tools",
        lib / "octave_tools",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


def _pip_install(lib: Path) -> None:
    subprocess.run(  # noqa: S603 - this interpreter's pip, on this checkout
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(lib), f"{ROOT}[mcp]"],
        check=True,
    )


def stage(target: Path, lib_from: str = "pip") -> Path:
    """Lay out the bundle in ``target`` (emptied first); returns its manifest's path."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("__pycache__"))
    lib = target / "server" / "lib"
    lib.mkdir(parents=True)
    if lib_from == "env":
        _copy_installed(lib)
    else:
        _pip_install(lib)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["version"] = _version()
    major, minor = sys.version_info[:2]
    manifest["compatibility"]["platforms"] = [PLATFORMS.get(platform.system(), "linux")]
    manifest["compatibility"]["runtimes"]["python"] = f">={major}.{minor},<{major}.{minor + 1}"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", type=Path, help="folder to lay the bundle out in")
    parser.add_argument("--lib", choices=("pip", "env"), default="pip")
    args = parser.parse_args()
    print(stage(args.stage, args.lib))


if __name__ == "__main__":
    main()
