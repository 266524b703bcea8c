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

from .identity import KEY_DIR, IdentityError, read_private
from .logs import get

log = get("entityd.localauth")

TOKEN_FILE = "nats.token"
TOKEN_ENV = "ENTITYD_NATS_TOKEN"
TOKEN_HEX = 64  # secrets.token_hex(32)
AUTHORIZATION = f"authorization {{ token: ${TOKEN_ENV} }}\n"


def token_path(data_dir: Path) -> Path:
    return data_dir / KEY_DIR / TOKEN_FILE


def ensure(data_dir: Path) -> str:
    """The entity's local token, made on first use, and made again (said in the log) when
    what the file holds is no token: an empty one would let nats-server take clients with
    no token at all. The token is no identity: entityctl reads the new one."""
    path = token_path(data_dir)
    if path.is_file() and not path.is_symlink() and not _usable(path):
        log.warning("nats_token_replaced", file=str(path),
                    reason="it held no token of 64 hex digits (damaged)")
        path.unlink()
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
    """The token; IdentityError (naming the file and the fix) when missing, exposed or no
    token (never an empty one, with which the server would take anyone)."""
    fix = "remove it: the daemon makes a new one at its next start"
    token = read_private(token_path(data_dir), "start the daemon once (`entityd run`) to "
                         "make it", damaged=fix)
    if not _valid(token):
        raise IdentityError(f"{token_path(data_dir)} holds no token of {TOKEN_HEX} hex "
                            f"digits; {fix}")
    return token


def _valid(token: str) -> bool:
    return len(token) == TOKEN_HEX and all(c in "0123456789abcdef" for c in token)


def _usable(path: Path) -> bool:
    try:
        return _valid(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


def server_config(base: Path, data_dir: Path) -> Path:
    """A config for the embedded server: `base` with the token login added, written to
    DATA_DIR/nats/server.conf (nats-server includes only relative paths)."""
    conf = data_dir / "nats" / "server.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(base.resolve(), conf.parent.resolve())
    conf.write_text(f'# Written by entityd at each start: {base} with the local login.\n'
                    f'include "{relative}"\n{AUTHORIZATION}')
    return conf
