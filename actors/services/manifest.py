"""services.toml: the services the entity declares in its workspace, read strictly.

    [services.web]
    command = ["python3", "app.py"]   # an argv, or a string run by /bin/sh -c
    ready = "/health"                 # GET until 200 over the service's socket
    restart = "on-failure"            # always | on-failure | never (default: always)
    files = ["app.py", "static/**"]   # globs whose change means a new revision
                                      # (default: any file of the workspace)

The file is the agent's text: every value is checked, and every mistake is reported at
once (the first MAX_ERRORS), so one fix makes it right.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from ..untrusted import toml_loads

NAME = re.compile(r"[a-z0-9-]{1,32}")
RESTART = ("always", "on-failure", "never")
KEYS = ("command", "ready", "restart", "files")
MAX_BYTES = 64 * 1024
MAX_ARGS = 64
MAX_COMMAND = 4096  # characters of a command, all arguments together
MAX_GLOBS = 32
MAX_GLOB = 200
MAX_READY = 256
MAX_ERRORS = 20
# A readiness path is sent as the target of an HTTP request line: visible ASCII only.
READY = re.compile(r"/[\x21-\x7e]*")


class ManifestError(Exception):
    """services.toml cannot be used; `errors` says each thing wrong with it."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: tuple[str, ...]  # the argv run in the sandbox
    ready: str  # the path GET asks for until it answers 200
    restart: str = "always"
    files: tuple[str, ...] = ()  # empty: any file of the workspace

    def pathspecs(self) -> list[str]:
        """`files` as git pathspecs: globs, matched by git in the sandbox (no pattern the
        agent wrote is matched by the daemon itself)."""
        return [f":(glob){pattern}" for pattern in self.files]


def parse(raw: bytes, max_services: int) -> dict[str, ServiceSpec]:
    """The services `raw` (the file's bytes) declares, by name; ManifestError otherwise."""
    if len(raw) > MAX_BYTES:
        raise ManifestError([f"the file is larger than {MAX_BYTES // 1024} KiB"])
    try:
        document = toml_loads(raw.decode())
    except UnicodeDecodeError:
        raise ManifestError(["the file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError([f"not valid TOML: {exc}"]) from None
    errors: list[str] = []
    extra = sorted(set(document) - {"services"})
    if extra:
        errors.append(f"unknown top-level key(s) {', '.join(map(repr, extra))}: only "
                      "[services.NAME] tables belong here")
    table = document.get("services", {})
    if not isinstance(table, dict):
        raise ManifestError([*errors, "`services` must be a table of [services.NAME] tables"])
    if len(table) > max_services:
        errors.append(f"{len(table)} services declared; at most {max_services} "
                      "(services.max_services)")
    specs: dict[str, ServiceSpec] = {}
    for name, body in table.items():
        spec = _service(str(name), body, errors)
        if spec is not None:
            specs[spec.name] = spec
    if errors:
        raise ManifestError(errors[:MAX_ERRORS] + (
            [f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else []))
    return specs


def _service(name: str, body: Any, errors: list[str]) -> ServiceSpec | None:
    where = f"[services.{name[:40]}]"
    before = len(errors)
    if not NAME.fullmatch(name):
        errors.append(f"{where}: a service name is 1-32 of a-z, 0-9 and -")
    if not isinstance(body, dict):
        errors.append(f"{where}: must be a table with command and ready")
        return None
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (the keys "
                      f"are {', '.join(KEYS)})")
    command = _command(body.get("command"), where, errors)
    ready = body.get("ready")
    if not isinstance(ready, str):
        errors.append(f'{where}: `ready` is required: the HTTP path to GET until it answers '
                      f'200, e.g. ready = "/health"')
    elif len(ready) > MAX_READY or not READY.fullmatch(ready):
        errors.append(f"{where}: `ready` must be a path starting with / of at most "
                      f"{MAX_READY} visible ASCII characters (no spaces)")
    restart = body.get("restart", "always")
    if restart not in RESTART:
        errors.append(f"{where}: `restart` must be one of {', '.join(RESTART)}")
    files = _files(body.get("files", []), where, errors)
    if len(errors) > before:
        return None
    assert command is not None and isinstance(ready, str)
    return ServiceSpec(name, command, ready, str(restart), files)


def _command(value: Any, where: str, errors: list[str]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        argv = ["/bin/sh", "-c", value]
        if not value.strip():
            errors.append(f"{where}: `command` is empty")
            return None
    elif isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        argv = list(value)
        if not argv[0]:
            errors.append(f"{where}: `command`'s program is empty")
            return None
        if len(argv) > MAX_ARGS:
            errors.append(f"{where}: `command` has {len(argv)} arguments; at most {MAX_ARGS}")
            return None
    else:
        errors.append(f'{where}: `command` is required: an argv list such as ["python3", '
                      '"app.py"], or a string run by /bin/sh -c')
        return None
    if any("\x00" in arg for arg in argv):
        errors.append(f"{where}: `command` contains a NUL character")
        return None
    if sum(len(arg) for arg in argv) > MAX_COMMAND:
        errors.append(f"{where}: `command` is longer than {MAX_COMMAND} characters")
        return None
    return tuple(argv)


def _files(value: Any, where: str, errors: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        errors.append(f'{where}: `files` must be a list of globs, e.g. ["app.py", "static/**"]')
        return ()
    if len(value) > MAX_GLOBS:
        errors.append(f"{where}: `files` has {len(value)} globs; at most {MAX_GLOBS}")
        return ()
    for glob in value:
        parts = glob.split("/")
        if (not glob or len(glob) > MAX_GLOB or glob.startswith("/") or ".." in parts
                or any(ord(c) < 0x20 for c in glob)):
            errors.append(f"{where}: `files` entry {glob[:60]!r} must be a relative glob of "
                          f"1-{MAX_GLOB} characters, without .. or control characters")
    return tuple(value)
