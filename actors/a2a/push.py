"""A2A push notifications: where a client may have the entity POST its task's updates,
and the HTTP client that does it without being turned against the entity's own network.

A push URL is the client's choice, so the entity must never become its proxy into
loopback or a private network (SSRF): the NATS port, the page's own port, a cloud's
metadata address. A URL passes only if it is https and every address its host resolves
to is public, or its `host[:port]` is one the operator listed in `[a2a] push_hosts`. It
is checked when the client registers it (a clear error then) and again at each delivery,
where the connection goes to the very address that was checked (no second lookup for a
DNS rebinding to change), with no proxy from the environment and no redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from a2a.server.context import ServerCallContext
from a2a.server.tasks import (
    DatabasePushNotificationConfigStore,
    PushNotificationConfigStore,
    PushNotificationEvent,
    PushNotificationSender,
)
from a2a.types import TaskPushNotificationConfig
from a2a.utils.errors import InvalidParamsError
from a2a.utils.proto_utils import to_stream_response
from google.protobuf.json_format import MessageToDict

MAX_URL = 2048
MAX_CONFIGS = 4  # per task and client: one event must not fan out to many POSTs
TIMEOUT_S = 5.0
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv6 forms that carry an IPv4 address in their last 32 bits, which a translator or a
# tunnel on the way may deliver to: the local-use NAT64 prefix, SIIT's IPv4-translated
# and the old IPv4-compatible addresses (6to4 carries one too: `sixtofour`).
EMBEDS_IPV4 = (NAT64, ipaddress.ip_network("64:ff9b:1::/48"),
               ipaddress.ip_network("::ffff:0:0:0/96"), ipaddress.ip_network("::/96"))
SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, but a private network's still


class PushRefused(ValueError):
    """A push URL the entity will not send to; the message says why."""


def public(address: str) -> bool:
    """Whether `address` is on the public internet (an IPv4 address inside an IPv6 one
    is judged as itself, whichever form carries it)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in SITE_LOCAL:
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif any(ip in net for net in EMBEDS_IPV4) and int(ip) & 0xFFFFFFFF:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


class PushPolicy:
    """Which push URLs pass, and the one address each may be sent to."""

    def __init__(self, listed: Callable[[str, str, int | None], bool]) -> None:
        self.listed = listed  # (scheme, host, port) named in push_hosts: Config.a2a's

    async def address(self, url: str) -> str:
        """The address to connect to for `url`; PushRefused if it may not be used."""
        if len(url) > MAX_URL:
            raise PushRefused(f"a push URL is at most {MAX_URL} characters")
        try:
            where = urlsplit(url)
            port = where.port
        except ValueError:
            raise PushRefused(f"{url[:80]!r} is not a URL") from None
        host = where.hostname
        if where.scheme not in ("http", "https") or not host:
            raise PushRefused(f"{url[:80]!r} is not an http(s) URL")
        if where.username is not None or where.password is not None:
            raise PushRefused("a push URL carries no credentials in it (use its "
                              "authentication or token)")
        listed = self.listed(where.scheme, host, port)
        if not listed and where.scheme != "https":
            raise PushRefused(f"push URLs are https (http only to a host the operator lists "
                              f"in [a2a] push_hosts), not {url[:80]!r}")
        port = port or (443 if where.scheme == "https" else 80)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise PushRefused(f"the push host {host[:80]!r} does not resolve") from None
        addresses = [str(info[4][0]) for info in found]
        if not addresses:
            raise PushRefused(f"the push host {host[:80]!r} does not resolve")
        if not listed:
            for address in addresses:
                if not public(address):
                    raise PushRefused(
                        f"the push host {host[:80]!r} is {address}, not a public address: "
                        "the entity does not send to its loopback or private network "
                        "unless the operator lists the host in [a2a] push_hosts")
        return addresses[0]

    async def check(self, url: str) -> bool:
        """The request handler's validator: a refusal is the client's error, said."""
        try:
            await self.address(url)
        except PushRefused as exc:
            raise InvalidParamsError(message=f"push notification URL refused: {exc}") from None
        return True


class PinnedTransport(httpx.AsyncBaseTransport):
    """Connects each request to the address the policy checked for its URL (TLS still
    verifies the URL's host name), so a lookup that answers differently the second time
    cannot move the request into the entity's network."""

    def __init__(self, policy: PushPolicy) -> None:
        self.policy = policy
        # No keep-alive: a pooled connection is keyed by address, not by host name.
        self.inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            address = await self.policy.address(str(request.url))
        except PushRefused as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        host = request.url.host
        request.url = request.url.copy_with(host=address)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def http_client(policy: PushPolicy) -> httpx.AsyncClient:
    """The client push notifications are sent with."""
    return httpx.AsyncClient(transport=PinnedTransport(policy), trust_env=False,
                             follow_redirects=False, timeout=TIMEOUT_S)


class PushConfigStore(DatabasePushNotificationConfigStore):
    """a2a-sdk's SQLite store of push configs (kept across restarts), with at most
    MAX_CONFIGS per task and client."""

    async def set_info(self, task_id: str, notification_config: TaskPushNotificationConfig,
                       context: ServerCallContext) -> TaskPushNotificationConfig:
        known = await self.get_info(task_id, context)
        wanted = notification_config.id or task_id
        if len(known) >= MAX_CONFIGS and all(c.id != wanted for c in known):
            raise InvalidParamsError(message=f"a task has at most {MAX_CONFIGS} push "
                                     "notification configs per client")
        return await super().set_info(task_id, notification_config, context)


class PushSender(PushNotificationSender):
    """Sends a task's updates to each of its push configs, as a2a-sdk's own sender does
    (the StreamResponse as JSON, the config's token and authentication as headers), but
    through `http_client` and with a failure logged in one line, not a traceback per
    event: a client's broken or hostile webhook must not flood the entity's log."""

    def __init__(self, http: httpx.AsyncClient, configs: PushNotificationConfigStore,
                 log: Any) -> None:
        self.http = http
        self.configs = configs
        self.log = log

    async def send_notification(self, task_id: str, event: PushNotificationEvent) -> None:
        targets = await self.configs.get_info_for_dispatch(task_id)
        if targets:
            body = MessageToDict(to_stream_response(event))
            await asyncio.gather(*(self._send(task_id, target, body) for target in targets))

    async def _send(self, task_id: str, target: TaskPushNotificationConfig,
                    body: dict[str, Any]) -> None:
        headers = {}
        if target.token:
            headers["X-A2A-Notification-Token"] = target.token
        auth = target.authentication
        if target.HasField("authentication") and auth.scheme and auth.credentials:
            headers["Authorization"] = f"{auth.scheme} {auth.credentials}"
        try:
            # The whole delivery, lookup included: a webhook that answers a byte at a time
            # would otherwise hold the task's updates for as long as it likes.
            async with asyncio.timeout(TIMEOUT_S):
                reply = await self.http.post(target.url, json=body, headers=headers)
            if reply.status_code >= 300:  # redirects included: never followed
                raise httpx.HTTPStatusError(f"answered {reply.status_code}",
                                            request=reply.request, response=reply)
        except TimeoutError:
            self.log.warning("a2a_push_failed", task_id=task_id, config=target.id[:64],
                             error=f"no answer within {TIMEOUT_S:g} s")
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a header it cannot send
            self.log.warning("a2a_push_failed", task_id=task_id, config=target.id[:64],
                             error=str(exc)[:300])
