"""The web actor: serves the entity's page from the daemon's loop (uvicorn on a socket
of its own), and answers `entityctl web` with a one-time login link.

A port it cannot have is said in an event and retried, never a crash: the page is a
face of the entity, and the entity goes on without it. The supervisor restarts this
actor like any other; an open page then reconnects and resumes its event stream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from entityd import Actor, Config, ConfigError, EntitydError, Envelope

from ..messages import TurnDone
from ..peer import keys
from ..peer.messages import Peers, PeersGet
from .api import Api
from .app import Pages, build
from .auth import REVOKED_FILE, LoginLinks, Sessions, load_secret
from .guard import is_loopback
from .messages import WebLink, WebLogin
from .server import WebServer, bind
from .sse import event_stream

if TYPE_CHECKING:  # the A2A SDK (a third of a second to import) only when it serves
    from ..a2a.server import A2AFace

RETRY_BIND_S = 30.0
PEERS_TIMEOUT_S = 5.0


class WebActor(Actor):
    name = "web"
    accepts = (WebLogin, TurnDone)
    reads_events: ClassVar[bool] = True

    def __init__(self, config: Config, links: LoginLinks) -> None:
        self.config = config
        self.settings = config.web
        self.links = links
        self.server: WebServer | None = None
        self.problem = "starting"
        self.stopping = False
        self.a2a: A2AFace | None = None  # with [a2a] api_keys: the entity's A2A face
        self.sessions: Sessions | None = None

    async def on_start(self) -> None:
        data = self.config.data_dir
        sessions = self.sessions = Sessions(load_secret(data), self.settings.session_hours,
                                            self.ctx.entity, data / REVOKED_FILE)
        if sessions.damaged:  # every page logged out, rather than some let back in
            self.ctx.log.warning("web_sessions_reset", problem=sessions.damaged)
        self.ctx.events.refresh = self._peer_keys
        if self.config.a2a.serving:
            from ..a2a.server import A2AFace

            self.a2a = A2AFace(self.ctx, self.config)
            await self.a2a.open()
        await self._listen()

    async def _listen(self) -> bool:
        try:
            sock = bind(self.settings.host, self.settings.port or self.links.port)
        except ConfigError as exc:
            if self.problem != str(exc):
                self.problem = str(exc)
                self.ctx.log.error("web_unavailable", reason=self.problem)
                await self.ctx.emit("web_unavailable", reason=self.problem)
            return False
        api = Api(self.ctx, self.config.peers.talk_timeout)
        assert self.sessions is not None, "on_start makes them before it listens"
        pages = Pages(self.sessions, self.links, secure=self.settings.allow_remote)
        port = int(sock.getsockname()[1])
        self.links.port = port
        a2a = self.a2a.routes(self.url_of(port)) if self.a2a is not None else []
        app = build(api, pages, event_stream(self.ctx.events, self._peer_keys,
                                             lambda: self.stopping),
                    loopback_only=is_loopback(self.settings.host), port=port, a2a=a2a,
                    services_host=self.config.services.host)
        self.server = WebServer(app, sock)
        self.problem = ""
        self.ctx.log.info("web_serving", url=self.url)
        await self.ctx.emit("web_serving", url=self.url)
        return True

    @property
    def url(self) -> str:
        return "" if self.server is None else self.url_of(self.server.port)

    def url_of(self, port: int) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    async def run(self) -> None:
        while self.server is None:
            await asyncio.sleep(RETRY_BIND_S)
            await self._listen()
        async with asyncio.TaskGroup() as tasks:
            if self.a2a is not None:
                tasks.create_task(self.a2a.resume())
            await self.server.serve()

    async def on_stop(self) -> None:
        self.stopping = True
        if self.sessions is not None and not self.sessions.flush():
            self.ctx.log.warning("web_logouts_not_saved",
                                 problem="the data dir's disk is full: a log out since the "
                                         "disk filled is lost at this restart")
        if self.server is not None:
            self.server.stop()
        if self.a2a is not None:
            await self.a2a.close()

    async def on_failure(self, exc: BaseException) -> None:
        await self.on_stop()

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case TurnDone() as done:
                if self.a2a is not None:
                    await self.a2a.done(done)
                return None
            case WebLogin():
                if self.server is None:
                    return WebLink("", "", 0.0, self.problem)
                token = self.links.mint()
                return WebLink(self.url, f"{self.url}login?token={token}", 300.0)
        return None

    async def _peer_keys(self) -> None:
        """Pin the peers' keys the peer actor knows, so their stored events verify."""
        try:
            peers: Peers = await self.ctx.ask(f"{self.ctx.entity}/peer", PeersGet(),
                                              PEERS_TIMEOUT_S)
        except EntitydError:
            return
        keys.pin(self.ctx.events.keyring, peers)
