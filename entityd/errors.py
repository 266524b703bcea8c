"""Errors of the daemon and its runtime (the wire protocol's live in protocol.errors).

EntitydError
├── ConfigError          a config key has a bad value; names the key and the fix
├── IdentityError        the key file is missing, unreadable or readable by others
├── DamagedFile          a file of the data dir cannot be used as it is; names it and the fix
├── NatsServerError      the embedded nats-server would not start or died
├── RuntimeStateError    an illegal lifecycle move ("cannot start a runtime twice")
├── ActorDeadError       the actor asked is stopped or the runtime is shutting down
├── AskTimeout           no reply within the deadline
├── RemoteError          the other side answered with an `error`, or an answer it could not open
├── Unsendable           a message holds what the wire cannot carry (an int past 64 bits, ...)
├── PeerUnavailable      a peer cannot be reached now (what needs it is retried later)
└── RestartBudgetExceeded  an actor crashed too often; the daemon must exit non-zero
"""

from __future__ import annotations

import errno
import sqlite3


class EntitydError(Exception):
    """Base of every error entityd raises on purpose."""


class ConfigError(EntitydError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config {key}: {problem}")
        self.key = key
        self.problem = problem


class IdentityError(EntitydError):
    pass


class NatsServerError(EntitydError):
    pass


class DamagedFile(EntitydError):
    """A file of the data dir the daemon keeps state in cannot be used as it is (torn,
    garbled, of a newer version, a directory where a file belongs): nothing is guessed
    and nothing is made afresh over it. An actor that meets one where it starts stops
    the daemon (exit 2) with this message, instead of crashing and restarting on it."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = str(path)


class RuntimeStateError(EntitydError):
    pass


class ActorDeadError(EntitydError):
    pass


class AskTimeout(EntitydError):
    def __init__(self, dst: str, typ: str, timeout: float, why: str = "") -> None:
        """`why`: what became of the replies that came but were refused, if any did."""
        super().__init__(f"no reply from {dst} to {typ} within {timeout:g} s"
                         + (f"; {why}" if why else ""))
        self.dst = dst
        self.typ = typ
        self.timeout = timeout


class RemoteError(EntitydError):
    def __init__(self, src: str, code: str, message: str) -> None:
        super().__init__(f"{src} refused: {code}: {message}")
        self.src = src
        self.code = code
        self.message = message


class Unsendable(EntitydError):
    """What was to be sent holds what msgpack cannot carry (an integer past 64 bits, a
    string with a lone surrogate): nothing was sent."""


class PeerUnavailable(EntitydError):
    pass


class RestartBudgetExceeded(EntitydError):
    def __init__(self, actor: str, restarts: int, window_s: float) -> None:
        super().__init__(f"actor {actor} crashed {restarts} times within {window_s:g} s; giving up")
        self.actor = actor


# SQLite's primary result codes for a full disk and a failed read or write of the file
# (an extended code carries the primary one in its low byte).
_SQLITE_FULL, _SQLITE_IOERR = 13, 10
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}


def disk_full(exc: BaseException) -> str | None:
    """What says the disk is full (or the storage failed a write) in `exc`, its causes,
    the exception a library wrapped (sqlalchemy's `orig`) or a group's members; None when
    nothing does. Not a bug of entityd's: a request that met it is refused, saying so,
    and the actor goes on (entityd/supervisor.py)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OUT_OF_SPACE:
            return current.strerror or "no space left"
        if isinstance(current, sqlite3.Error) and _sqlite_storage(current):
            return str(current)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__,
                                 getattr(current, "orig", None))
                     if isinstance(e, BaseException))
    return None


def _sqlite_storage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)
    return any(words in str(exc) for words in ("database or disk is full", "disk I/O error"))
