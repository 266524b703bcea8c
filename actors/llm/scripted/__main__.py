"""The offline demo: `python -m actors.llm.scripted` serves a script from a JSON file, or
the demo model, on 127.0.0.1 until SIGINT or SIGTERM (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from entityd import configure_logging

from ..demo import demo_reply
from .script import Script, step_from_json
from .server import ScriptedLLMServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actors.llm.scripted",
        description="Serve a scripted OpenAI-compatible chat API on 127.0.0.1 (not a model).",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--script", type=Path, help="JSON file: a list of steps")
    source.add_argument(
        "--demo", action="store_true",
        help="serve the demo model: stateless answers marked '(demo model)', for any request",
    )
    args = parser.parse_args(argv)
    configure_logging("info")  # to stderr; stdout carries only the line naming the URL
    if args.demo:
        return _serve(demo_reply, args.port)
    try:
        raw = json.loads(args.script.read_text())
        if not isinstance(raw, list):
            raise ValueError("the script must be a JSON list of steps")
        steps = [step_from_json(item) for item in raw]
    except (OSError, ValueError, TypeError) as exc:
        print(f"scripted LLM server: cannot use {args.script}: {exc}", file=sys.stderr)
        return 2
    return _serve(steps, args.port)


def _serve(script: Script, port: int) -> int:
    try:
        asyncio.run(_run(script, port))
    except OSError as exc:  # the port is taken, most often: say which, and the way out
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"scripted LLM server: cannot listen on 127.0.0.1:{port}: {reason}"
              "; free that port or pass another --port (0 picks a free one)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
    return 0


async def _run(script: Script, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ScriptedLLMServer(script, port=port) as server:
        print(f"scripted LLM server (not a model) on {server.base_url}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
