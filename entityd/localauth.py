"""The login to an entity's own nats-server: a random token in the data dir (0600), so
only the daemon's user (the daemon, and entityctl run as that user) can reach the local
bus, not every process of the host nor a sandboxed command let onto the network.

The server reads the token from its environment (`$ENTITYD_NATS_TOKEN` in the config it
is started with), never from its command line, which every local user can read.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .identity import KEY_DIR, read_private

TOKEN_FILE = "nats.token"
TOKEN_ENV = "ENTITYD_NATS_TOKEN"
AUTHORIZATION = f"authorization {{ token: ${TOKEN_ENV} }}\n"


def token_path(data_dir: Path) -> Path:
    return data_dir / KEY_DIR / TOKEN_FILE


def ensure(data_dir: Path) -> str:
    """The entity's local token, made on first use."""
    path = token_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    return read(data_dir)


def read(data_dir: Path) -> str:
    """The token; IdentityError (naming the file and the fix) when missing or exposed."""
    return read_private(token_path(data_dir), "start the daemon once (`entityd run`) to "
                        "make it")


def server_config(base: Path, data_dir: Path) -> Path:
    """A config for the embedded server: `base` with the token login added, written to
    DATA_DIR/nats/server.conf (nats-server includes only relative paths)."""
    conf = data_dir / "nats" / "server.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(base.resolve(), conf.parent.resolve())
    conf.write_text(f'# Written by entityd at each start: {base} with the local login.\n'
                    f'include "{relative}"\n{AUTHORIZATION}')
    return conf
