"""``python -m octave_tools``: the ``octave-tools`` command (``python -m octave_tools serve``
runs the MCP server). An entry point only: nothing imports this module."""

from octave_tools.cli import main

main()
