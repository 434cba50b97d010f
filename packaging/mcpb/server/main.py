"""Entry point of the octave-tools bundle (.mcpb): the MCP server over stdio.

The app starts ``python3 ${__dirname}/server/main.py`` with ``PYTHONPATH`` set to the
bundled ``server/lib`` and the user's settings in the environment (manifest.json).
"""

import sys

from octave_tools.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main([]))
