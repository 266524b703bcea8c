"""The NATS connection: reconnect forever, the local reply-inbox prefix (never forwarded to
the hub), every state change logged."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from protocol import subjects

from .logs import get

log = get("entityd.bus")


ERROR_LOG_INTERVAL_S = 10.0

_WHITESPACE = re.compile(r"\s")  # on a str, what str.isspace() says of each character


class HeaderClient(Client):
    """nats-py's client, its header parser the same function made faster.

    nats-py 2.16 tests every character of every header name with `str.isspace` in a
    generator: 9.8 us for the eight headers a JetStream direct get answers with, 60% of
    it in that one line, which `ledger verify` pays per entry. This parses the same
    block to the same dict (tests/test_bus_headers.py holds it to the library's) in
    3.7 us. With a nats-py that has no such method, it is simply not called."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if _WHITESPACE.search(key):  # names are tokens: whitespace makes it no name
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out


def shown_url(url: str) -> str:
    """`url` without a login (user:password@) in it: what a log line or a status shows."""
    parts = []
    for one in url.split(","):
        scheme, sep, rest = one.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            rest = rest.split("@", 1)[1]
        parts.append(f"{scheme}{sep}{rest}")
    return ",".join(parts)


async def connect(
    url: str,
    *,
    entity: str,
    client_name: str,
    connect_timeout: float = 5.0,
    retry_forever: bool = True,
    token: str | None = None,
    reconnect: bool | None = None,
) -> Client:
    """Connect to `url` (with the entity's local `token` for its own embedded server);
    the daemon retries forever, entityctl fails at once. A connection made reconnects
    when lost as long as `reconnect` (default: `retry_forever`) says so: `entityctl
    watch` follows a daemon that restarts, though its first connect fails at once."""
    reconnects = retry_forever if reconnect is None else reconnect
    last_error = [0.0]
    shown = shown_url(url)

    async def disconnected() -> None:
        last_error[0] = 0.0
        # nats-py reports its own close() as a disconnect too: expected, so info. A lost
        # connection leaves the client reconnecting, or closed with the error recorded.
        if nc.is_closed and nc.last_error is None:
            log.info("nats_disconnected", url=shown, reason="closed")
        else:
            log.warning("nats_disconnected", url=shown)

    async def reconnected() -> None:
        log.info("nats_reconnected", url=shown_url(nc.connected_url.geturl())
                 if nc.connected_url else shown)

    async def error(exc: Exception) -> None:
        # While the server is down every reconnect attempt fails: log them now and then.
        now = time.monotonic()
        if now - last_error[0] >= ERROR_LOG_INTERVAL_S:
            last_error[0] = now
            log.warning("nats_error", error=f"{type(exc).__name__}: {exc}")

    async def closed() -> None:
        log.info("nats_closed", url=shown)

    delay = 0.2
    while True:
        nc = HeaderClient()
        try:
            await _connect(
                nc,
                None if retry_forever else connect_timeout,
                servers=[url],
                name=client_name,
                inbox_prefix=subjects.local_inbox_prefix(entity),
                token=token,
                connect_timeout=connect_timeout,
                allow_reconnect=reconnects,
                max_reconnect_attempts=-1 if reconnects else 0,
                reconnect_time_wait=0.25,
                ping_interval=10,
                max_outstanding_pings=3,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                closed_cb=closed,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            if not retry_forever:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise ConnectionError(
                    f"cannot connect to {shown}: {str(exc) or 'timed out'}"
                ) from None
            log.warning("nats_connect_failed", url=shown, error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        log.info("nats_connected", url=shown)
        return nc


async def _connect(nc: Client, deadline: float | None, **options: Any) -> None:
    # nats-py keeps retrying a refused first connect even with allow_reconnect=False:
    # a one-shot client (entityctl) bounds it by the connect timeout instead.
    if deadline is None:
        await nc.connect(**options)
        return
    async with asyncio.timeout(deadline):
        await nc.connect(**options)


async def barrier(nc: Client) -> None:
    """Return once the server has processed everything sent so far (e.g. new SUBs).

    nats-py's flush() writes its PING straight to the socket, ahead of commands still
    in its pending buffer, so one flush can return before a fresh SUB reached the
    server. Its PONG wait lets the flusher write that buffer; a second PING then
    follows it.
    """
    await nc.flush()
    await nc.flush()


async def unsubscribe(sub: Subscription | None) -> None:
    """Unsubscribe, if subscribed; a connection already gone has nothing left to undo."""
    if sub is None:
        return
    try:
        await sub.unsubscribe()
    except Exception:  # closed or draining: the server has forgotten the subscription
        pass
