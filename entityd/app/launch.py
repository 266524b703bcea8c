"""The console scripts' entry points. Loading the commands takes most of a second; Ctrl-C
meanwhile is one line and exit 130, never a traceback."""

from __future__ import annotations

import importlib
import sys

EXIT_INTERRUPTED = 130


def entityd() -> int:
    return _run("entityd", "entityd.app.cli")


def entityctl() -> int:
    return _run("entityctl", "entityd.app.ctl")


def _run(name: str, module: str) -> int:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    code: int = main()
    return code
