"""What the `entityd` and `entityctl` command lines share: the --config argument (or
$ENTITYD_CONFIG), --version, and subcommand help pages with a sentence and an example."""

from __future__ import annotations

import argparse
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import ConfigError

CONFIG_ENV = "ENTITYD_CONFIG"


def add_config(parser: argparse.ArgumentParser) -> None:
    """--config FILE, defaulting to $ENTITYD_CONFIG; check it with `config_file`."""
    parser.add_argument("--config", type=Path, default=os.environ.get(CONFIG_ENV) or None,
                        metavar="FILE",
                        help=f"the entity's DATA_DIR/entityd.toml (default: ${CONFIG_ENV})")


def config_file(given: Path | None) -> Path:
    """The config file to load, or a ConfigError that says what was wrong and the fix."""
    if given is None:
        raise ConfigError("--config", f"not given: pass --config DATA_DIR/"
                          f"{config_mod.CONFIG_NAME} or set {CONFIG_ENV}")
    path = given.expanduser()
    if path.is_dir():
        raise ConfigError("--config", f"{given} is a directory; --config takes the config "
                          f"file: --config {path / config_mod.CONFIG_NAME}")
    return path


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {metadata.version('entityd')}")


def command(sub: Any, name: str, summary: str, example: str,
            **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with `summary` (one sentence) and ends with
    `example` (one or more command lines)."""
    return sub.add_parser(
        name, help=summary, description=summary,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def duration(text: str) -> float:
    """Seconds, from 90, 90s, 30m, 2h or 1d (an argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(text[-1:], 1)
    try:
        seconds = float(text[:-1] if text[-1:] in units else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90, 30m, "
                                         "2h or 1d") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is more than 0")
    return seconds
