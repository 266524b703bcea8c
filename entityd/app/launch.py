"""The console scripts' entry points. Loading the commands takes most of a second; Ctrl-C
meanwhile is one line and exit 130, never a traceback."""

from __future__ import annotations

import importlib
import signal
import sys

EXIT_INTERRUPTED = 130


def entityd() -> int:
    return _run("entityd", "entityd.app.cli")


def entityctl() -> int:
    return _run("entityctl", "entityd.app.ctl")


def _run(name: str, module: str) -> int:
    # Ctrl-C is held while the commands load: a KeyboardInterrupt raised inside a C
    # module's import can come out as another error (CPython: "TypeError: expected a
    # message argument" from ssl's), a traceback; held, it is seen once they are loaded.
    held = _hold_interrupts()
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        interrupted = held and _release_interrupts()
    if interrupted:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    code: int = main()
    return code


def _hold_interrupts() -> bool:
    """Block SIGINT (where signals can be blocked); whether it is held."""
    if not hasattr(signal, "pthread_sigmask"):
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    return True


def _release_interrupts() -> bool:
    """Unblock SIGINT, taking one that came meanwhile; whether one did."""
    came = signal.SIGINT in signal.sigpending()
    if came:
        signal.sigtimedwait({signal.SIGINT}, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return came
