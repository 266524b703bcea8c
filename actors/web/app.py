"""The page's routes as one table, behind the guard: the login, the page and its static
files, the JSON API and the activity stream."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .api import Api, Handler
from .auth import LoginLinks, Sessions
from .guard import ASGIApp, Guard, session_cookie

STATIC = Path(str(resources.files("actors.web") / "static"))
MAX_FORM = 4096
UNSAVED_LOGOUT = ("Logged out for now, but the entity's disk is full and the log out is not "
                  "saved yet: if the entity restarts before its disk has room, this session "
                  "would be good again. Log out again once there is room.")


class Pages:
    """The login and the page itself (its data comes from the API)."""

    def __init__(self, sessions: Sessions, links: LoginLinks, secure: bool) -> None:
        self.sessions = sessions
        self.links = links
        self.secure = secure

    def _logged_in(self) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(self.sessions.cookie, self.sessions.issue(),
                            max_age=int(self.sessions.lifetime), httponly=True,
                            samesite="strict", secure=self.secure, path="/")
        return response

    async def login_form(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        if token:
            if self.links.redeem(token):
                return self._logged_in()
            return self._form("That login link is used or expired: run `entityctl web` "
                              "for a new one.", 403)
        return self._form("", 200)

    async def login_secret(self, request: Request) -> Response:
        raw = await request.body()
        fields = parse_qs(raw[:MAX_FORM].decode("utf-8", "replace"))
        offered = (fields.get("secret") or [""])[0]
        if offered and self.sessions.secret_ok(offered):
            return self._logged_in()
        return self._form("That is not this entity's web secret.", 403)

    async def logout(self, request: Request) -> Response:
        # Ended here, not only forgotten by this browser: a copy of the cookie is void too.
        self.sessions.revoke(session_cookie(request.scope, self.sessions.cookie))
        response: Response = RedirectResponse("/login", status_code=303)
        if self.sessions.unsaved:  # not said done: a restart would let the cookie back in
            response = self._form(UNSAVED_LOGOUT, 503)
        response.delete_cookie(self.sessions.cookie, path="/")
        return response

    async def index(self, request: Request) -> Response:
        cookie = session_cookie(request.scope, self.sessions.cookie) or ""
        page = (STATIC / "index.html").read_text()
        return HTMLResponse(page.replace("{{csrf}}", self.sessions.csrf(cookie)))

    def _form(self, problem: str, status: int) -> Response:
        page = (STATIC / "login.html").read_text()
        # The only text put into the page: one of the fixed sentences above.
        return HTMLResponse(page.replace("{{problem}}", problem), status_code=status)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "not_found", "message": f"no {request.url.path[:200]} here"},
                        status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "method_not_allowed",
                         "message": f"{request.url.path[:200]} does not take {request.method}"},
                        status_code=405)


def build(api: Api, pages: Pages, events: Handler, *, loopback_only: bool,
          port: int, a2a: Sequence[BaseRoute] = (), services_host: str = "") -> ASGIApp:
    """The page's routes, then A2A's (actors/a2a/server.py: empty unless it serves)."""
    g = api.guarded
    routes: list[BaseRoute] = [
        Route("/", pages.index),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login_secret, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=STATIC)),
        Route("/api/events", events),
        Route("/api/status", g(api.status)),
        Route("/api/goal", g(api.goal), methods=["POST"]),
        Route("/api/memory", g(api.memory)),
        Route("/api/todo", g(api.todo)),
        Route("/api/todo", g(api.todo_add), methods=["POST"]),
        Route("/api/todo/{id:int}", g(api.todo_update), methods=["POST"]),
        Route("/api/usage", g(api.usage)),
        Route("/api/peers", g(api.peers)),
        Route("/api/peers/{name}/check", g(api.peer_check), methods=["POST"]),
        Route("/api/talk", g(api.talk), methods=["POST"]),
        Route("/api/tasks", g(api.tasks)),
        Route("/api/ledger", g(api.ledger)),
        Route("/api/commits", g(api.commits)),
        Route("/api/commits/{sha}", g(api.commit_diff)),
        Route("/api/services", g(api.services)),
        *a2a,
    ]
    handlers = {404: _not_found, 405: _not_allowed}
    return Guard(Starlette(routes=routes, exception_handlers=handlers), pages.sessions,
                 loopback_only=loopback_only, port=lambda: port, services_host=services_host)
