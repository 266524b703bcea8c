"""Errors of the daemon and its runtime (the wire protocol's live in protocol.errors).

EntitydError
├── ConfigError          a config key has a bad value; names the key and the fix
├── IdentityError        the key file is missing, unreadable or readable by others
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


class RuntimeStateError(EntitydError):
    pass


class ActorDeadError(EntitydError):
    pass


class AskTimeout(EntitydError):
    def __init__(self, dst: str, typ: str, timeout: float) -> None:
        super().__init__(f"no reply from {dst} to {typ} within {timeout:g} s")
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
