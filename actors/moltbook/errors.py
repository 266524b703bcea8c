"""Why a Moltbook call did not happen or did not work, each a sentence for whoever reads it
(the model, through the tool's answer, or the operator, through entityctl).

    MoltbookError
    ├── NoKey             no key configured (the variable is empty and no key file)
    ├── KeyRefused        the key file is unusable, or Moltbook answered 401/403
    ├── RedirectRefused   a redirect to another origin, which would take the key along
    ├── Unreachable       no answer: connection refused, timeout, not JSON
    ├── RateLimited       Moltbook answered 429 longer than we wait for
    ├── ApiError          any other {"success": false, "error": ..., "hint": ...}
    └── Refused           our side refuses before sending: a documented limit, the DM
                          policy, a private turn, verification stopped, bad arguments

No message ever holds the key: the client scrubs it from whatever the server said.
"""

from __future__ import annotations


class MoltbookError(Exception):
    """A refusal or failure to tell the caller; never a bug of ours."""


class NoKey(MoltbookError):
    pass


class KeyRefused(MoltbookError):
    pass


class RedirectRefused(MoltbookError):
    pass


class Unreachable(MoltbookError):
    pass


class RateLimited(MoltbookError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiError(MoltbookError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Refused(MoltbookError):
    pass
