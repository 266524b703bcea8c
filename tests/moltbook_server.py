"""A local server following Moltbook's documented API v1, for tests; not Moltbook.

It answers on 127.0.0.1 what SKILL.md 1.11, MESSAGING.md and RULES.md document (the
endpoints actors/moltbook/__init__.py lists), with in-memory agents, posts, comments,
submolts, follows and DMs, and verification challenges written the way the docs show them
(`obfuscate`). It records every request (its monotonic arrival time, method, path and
headers) so tests can check what the client sent and when, and can be told to answer
429s, to redirect, to be slow, or to expect a wrong answer to its challenges.

`Recorder` is a second server that only records what reaches it (the "other host" a
redirect points to).
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NOISE = "]^[/-|~{}<\\"
# Challenges as the docs describe them: a lobster, physics, two numbers, one operation.
TEMPLATES = [
    ("a lobster swims at {a} meters and slows by {b}, whats the new speed?", "-"),
    ("a lobster claw force is {a} newtons and increases by {b}", "+"),
    ("the lobster multiplies dominance, the first claw is {a} newtons and the second claw "
     "is {b} newtons", "*"),
    ("a lobster claw exerts {a} newtons and gains {b} newtons, what is the force", "+"),
    ("a lobster exerts {a} newtons and the lobster swims at velocity {b} meters, whats the "
     "power?", "*"),
    ("a lobster has {a} meters of rope and it is divided by {b}, how long is each piece", "/"),
]


def words(number: int) -> str:
    if number < 20:
        return UNITS[number]
    tens, unit = divmod(number, 10)
    return TENS[tens] + (f" {UNITS[unit]}" if unit else "")


def obfuscate(text: str, rng: random.Random) -> str:
    """`text` the way Moltbook's challenges look: alternating caps, scattered symbols,
    doubled letters, shattered words."""
    out = []
    for word in text.split():
        letters = []
        for i, char in enumerate(word):
            char = char.upper() if (i + rng.randint(0, 1)) % 2 else char.lower()
            letters.append(char)
            if char.isalpha() and rng.random() < 0.12:
                letters.append(char.lower())
            if rng.random() < 0.08:
                letters.append(rng.choice(NOISE))
        piece = "".join(letters)
        if len(word) >= 5 and word.isalpha() and rng.random() < 0.25:
            cut = rng.randint(2, len(piece) - 2)
            piece = piece[:cut] + " " + piece[cut:]
        if rng.random() < 0.3:
            piece += rng.choice(NOISE)
        out.append(piece)
        if rng.random() < 0.1:
            out.append(rng.choice(["um", "uM", "Um~"]))
    return "A] " + " ".join(out)


def make_challenge(rng: random.Random) -> tuple[str, str]:
    """(challenge text, the answer Moltbook expects)."""
    template, op = rng.choice(TEMPLATES)
    a, b = rng.randint(2, 99), rng.randint(2, 40)
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    return obfuscate(template.format(a=words(a), b=words(b)), rng), f"{result:.2f}"


@dataclass
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: Any = None


@dataclass
class Challenge:
    code: str
    answer: str
    expires: float  # wall clock
    kind: str
    content_id: str
    used: bool = False


@dataclass
class World:
    """What the server holds; every field may be set by a test (under `lock`)."""

    agents: dict[str, dict[str, Any]] = field(default_factory=dict)  # by api key
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by post id
    submolts: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "general": {"name": "general", "display_name": "General", "subscriber_count": 3,
                    "description": "Everything"},
        "aithoughts": {"name": "aithoughts", "display_name": "AI Thoughts",
                       "subscriber_count": 1, "description": "Musings"}})
    subscriptions: set[str] = field(default_factory=set)
    follows: set[str] = field(default_factory=set)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    dm_requests: list[dict[str, Any]] = field(default_factory=list)
    challenges: dict[str, Challenge] = field(default_factory=dict)
    verifications: list[tuple[str, bool]] = field(default_factory=list)  # (code, right)
    challenge_every: bool = True  # a challenge on each post and comment
    wrong_answers: bool = False  # expect another answer than the right one
    challenge_ttl: float = 300.0
    throttle: list[str] = field(default_factory=list)  # Retry-After values of next 429s
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location (301)
    delay: float = 0.0  # seconds before each answer
    seen: list[Seen] = field(default_factory=list)


class MoltbookServer:
    """A local server following Moltbook's documented API v1 (see the module docstring)."""

    def __init__(self, seed: int = 7) -> None:
        self.world = World()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def __enter__(self) -> MoltbookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_agent(self, key: str, name: str = "entity-a", age: timedelta = timedelta(days=3),
                  claimed: bool = True) -> None:
        created = (datetime.now(UTC) - age).isoformat().replace("+00:00", "Z")
        with self.lock:
            self.world.agents[key] = {"name": name, "description": "", "karma": 5,
                                      "follower_count": 0, "following_count": 0,
                                      "created_at": created, "claimed": claimed}

    def requests(self, prefix: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.world.seen if s.path.startswith("/api/v1" + prefix)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                with server.lock:
                    server.world.seen.append(Seen(time.monotonic(), method, self.path,
                                                  dict(self.headers.items()), body))
                    delay = server.world.delay
                if delay:
                    time.sleep(delay)
                status, payload, headers = server.answer(method, self.path, self.headers,
                                                         body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    # ---- the API --------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: Any, body: Any
               ) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            world = self.world
            if path in world.redirect:
                return 301, {}, {"Location": world.redirect[path]}
            if not path.startswith("/api/v1/"):
                return 404, _error("Not found"), {}
            route = path.removeprefix("/api/v1")
            if method == "POST" and route == "/agents/register":
                return self._register(body)
            auth = headers.get("Authorization") or ""
            agent = world.agents.get(auth.removeprefix("Bearer "))
            if not auth.startswith("Bearer ") or agent is None:
                return 401, _error("Invalid API key", "Check your API key"), {}
            if world.throttle:
                retry = world.throttle.pop(0)
                return 429, {"success": False, "error": "Rate limit exceeded",
                             "retry_after_seconds": 1}, {"Retry-After": retry}
            return self._route(method, route, query, body if isinstance(body, dict) else {},
                               agent)

    def _register(self, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return 400, _error("name is required"), {}
        key = "moltbook_" + secrets.token_hex(12)
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.world.agents[key] = {"name": name, "description": body.get("description", ""),
                                  "karma": 0, "created_at": created, "claimed": False}
        return 201, {"agent": {"api_key": key,
                               "claim_url": f"https://www.moltbook.com/claim/moltbook_claim_{name}",
                               "verification_code": "reef-X4B2"},
                     "important": "SAVE YOUR API KEY!"}, {}

    def _route(self, method: str, route: str, query: dict[str, str], body: dict[str, Any],
               agent: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        for pattern, verb, handler in self._routes():
            match = re.fullmatch(pattern, route)
            if match and verb == method:
                result: tuple[int, dict[str, Any]] = handler(*match.groups(), query=query,
                                                            body=body, agent=agent)
                return result[0], result[1], {}
        return 404, _error(f"no route {method} {route}"), {}

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            (r"/agents/me", "GET", self._me),
            (r"/agents/status", "GET", self._status),
            (r"/home", "GET", self._home),
            (r"/feed", "GET", self._feed),
            (r"/posts", "GET", self._feed),
            (r"/posts", "POST", self._create_post),
            (r"/posts/([^/]+)", "GET", self._post),
            (r"/posts/([^/]+)/comments", "GET", self._comments),
            (r"/posts/([^/]+)/comments", "POST", self._create_comment),
            (r"/posts/([^/]+)/(upvote|downvote)", "POST", self._vote),
            (r"/comments/([^/]+)/upvote", "POST", self._vote_comment),
            (r"/verify", "POST", self._verify),
            (r"/search", "GET", self._search),
            (r"/submolts", "GET", self._submolts),
            (r"/submolts/([^/]+)", "GET", self._submolt),
            (r"/submolts/([^/]+)/subscribe", "POST", self._subscribe),
            (r"/submolts/([^/]+)/subscribe", "DELETE", self._unsubscribe),
            (r"/agents/([^/]+)/follow", "POST", self._follow),
            (r"/agents/([^/]+)/follow", "DELETE", self._unfollow),
            (r"/agents/dm/check", "GET", self._dm_check),
            (r"/agents/dm/conversations", "GET", self._conversations),
            (r"/agents/dm/conversations/([^/]+)", "GET", self._conversation),
            (r"/agents/dm/request", "POST", self._dm_request),
            (r"/agents/dm/conversations/([^/]+)/send", "POST", self._dm_send),
        ]

    def _me(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        agent = dict(kw["agent"])
        return 200, {"success": True, "agent": {k: v for k, v in agent.items()
                                                if k != "claimed"}}

    def _status(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"success": True,
                     "status": "claimed" if kw["agent"]["claimed"] else "pending_claim"}

    def _home(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        agent = kw["agent"]
        unread = sum(c["unread"] for c in self.world.conversations.values())
        return 200, {"your_account": {"name": agent["name"], "karma": agent["karma"],
                                      "unread_notification_count": 1},
                     "activity_on_your_posts": [],
                     "your_direct_messages": {"pending_request_count": 0,
                                              "unread_message_count": unread},
                     "what_to_do_next": ["Browse the feed - GET /api/v1/feed"]}

    def _visible(self) -> list[dict[str, Any]]:
        return [p for p in self.world.posts.values() if p["verification_status"] != "pending"]

    def _feed(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        query = kw["query"]
        posts = self._visible()
        if query.get("submolt"):
            posts = [p for p in posts if p["submolt"]["name"] == query["submolt"]]
        limit = int(query.get("limit", 25))
        return 200, {"success": True, "posts": posts[:limit], "has_more": False}

    def _post(self, post_id: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        post = self.world.posts.get(post_id)
        if post is None:
            return 404, _error("Post not found")
        return 200, {"success": True, "post": post}

    def _comments(self, post_id: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        if post_id not in self.world.posts:
            return 404, _error("Post not found")
        return 200, {"success": True, "comments": self.world.comments.get(post_id, [])}

    def _challenge(self, kind: str, content_id: str) -> dict[str, Any]:
        text, answer = make_challenge(self.rng)
        if self.world.wrong_answers:
            answer = f"{float(answer) + 1:.2f}"
        code = "moltbook_verify_" + secrets.token_hex(8)
        expires = time.time() + self.world.challenge_ttl
        self.world.challenges[code] = Challenge(code, answer, expires, kind, content_id)
        when = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
        return {"verification_code": code, "challenge_text": text, "expires_at": when,
                "instructions": "Solve the math problem and respond with ONLY the number "
                                "(with 2 decimal places, e.g., '525.00'). Send your answer "
                                "to POST /api/v1/verify with the verification_code."}

    def _create_post(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        body, agent = kw["body"], kw["agent"]
        if not body.get("title") or not body.get("submolt"):
            return 400, _error("title and submolt are required")
        post_id = secrets.token_hex(6)
        post = {"id": post_id, "title": body["title"], "content": body.get("content"),
                "url": body.get("url"), "submolt": {"name": body["submolt"]},
                "author": {"name": agent["name"]}, "upvotes": 0, "downvotes": 0,
                "comment_count": 0, "created_at": datetime.now(UTC).isoformat(),
                "verification_status": "verified"}
        self.world.posts[post_id] = post
        answer: dict[str, Any] = {"success": True, "post": dict(post)}
        if self.world.challenge_every:
            post["verification_status"] = "pending"
            answer["message"] = "Post created! Complete verification to publish."
            answer["post"] = {**post, "verification": self._challenge("post", post_id)}
        return 201, answer

    def _create_comment(self, post_id: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        body, agent = kw["body"], kw["agent"]
        if post_id not in self.world.posts:
            return 404, _error("Post not found")
        if not body.get("content"):
            return 400, _error("content is required")
        comment = {"id": secrets.token_hex(6), "content": body["content"],
                   "author": {"name": agent["name"]}, "upvotes": 0,
                   "parent_id": body.get("parent_id"), "replies": [],
                   "verification_status": "verified"}
        self.world.comments.setdefault(post_id, []).append(comment)
        self.world.posts[post_id]["comment_count"] += 1
        answer: dict[str, Any] = {"success": True, "comment": dict(comment)}
        if self.world.challenge_every:
            comment["verification_status"] = "pending"
            answer["comment"] = {**comment,
                                 "verification": self._challenge("comment", comment["id"])}
        return 201, answer

    def _verify(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        body = kw["body"]
        answer = body.get("answer")
        if not isinstance(answer, str):
            return 400, _error("answer must be a string")
        challenge = self.world.challenges.get(str(body.get("verification_code")))
        if challenge is None:
            return 404, _error("Invalid verification code")
        if challenge.used:
            return 409, _error("Verification code already used")
        challenge.used = True
        if time.time() > challenge.expires:
            self.world.verifications.append((challenge.code, False))
            return 410, _error("Verification code expired")
        try:
            right = abs(float(answer) - float(challenge.answer)) < 0.005
        except ValueError:
            right = False
        self.world.verifications.append((challenge.code, right))
        if not right:
            return 400, {"success": False, "error": "Incorrect answer",
                         "content_type": challenge.kind, "content_id": challenge.content_id,
                         "hint": "The answer should be a number with 2 decimal places"}
        if challenge.kind == "post":
            self.world.posts[challenge.content_id]["verification_status"] = "verified"
        return 200, {"success": True, "message": "Verification successful!",
                     "content_type": challenge.kind, "content_id": challenge.content_id}

    def _vote(self, post_id: str, direction: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        post = self.world.posts.get(post_id)
        if post is None:
            return 404, _error("Post not found")
        post["upvotes" if direction == "upvote" else "downvotes"] += 1
        return 200, {"success": True, "message": "Upvoted! 🦞", "author": post["author"],
                     "already_following": False}

    def _vote_comment(self, comment_id: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        for comments in self.world.comments.values():
            for comment in comments:
                if comment["id"] == comment_id:
                    comment["upvotes"] += 1
                    return 200, {"success": True, "message": "Upvoted! 🦞"}
        return 404, _error("Comment not found")

    def _search(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        q = kw["query"].get("q", "")
        if not q:
            return 400, _error("q is required")
        words_of = set(q.lower().split())
        results = [{"id": p["id"], "type": "post", "title": p["title"],
                    "content": p["content"], "upvotes": p["upvotes"], "similarity": 0.8,
                    "author": p["author"], "post_id": p["id"]}
                   for p in self._visible()
                   if words_of & set(f"{p['title']} {p['content']}".lower().split())]
        return 200, {"success": True, "query": q, "type": kw["query"].get("type", "all"),
                     "results": results, "count": len(results)}

    def _submolts(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"success": True, "submolts": list(self.world.submolts.values())}

    def _submolt(self, name: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        if name not in self.world.submolts:
            return 404, _error("Submolt not found")
        return 200, {"success": True, "submolt": {**self.world.submolts[name],
                                                  "your_role": None}}

    def _subscribe(self, name: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        if name not in self.world.submolts:
            return 404, _error("Submolt not found")
        self.world.subscriptions.add(name)
        return 200, {"success": True, "message": f"Subscribed to m/{name}"}

    def _unsubscribe(self, name: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        self.world.subscriptions.discard(name)
        return 200, {"success": True, "message": f"Unsubscribed from m/{name}"}

    def _follow(self, name: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        self.world.follows.add(name)
        return 200, {"success": True, "message": f"Now following {name}"}

    def _unfollow(self, name: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        self.world.follows.discard(name)
        return 200, {"success": True, "message": f"Unfollowed {name}"}

    def _dm_check(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        unread = sum(c["unread"] for c in self.world.conversations.values())
        return 200, {"success": True, "has_activity": bool(unread),
                     "summary": f"0 pending requests, {unread} unread messages",
                     "requests": {"count": 0, "items": []},
                     "messages": {"total_unread": unread, "latest": []}}

    def _conversations(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        items = [{"conversation_id": cid, "with_agent": {"name": c["with"]},
                  "unread_count": c["unread"]} for cid, c in self.world.conversations.items()]
        return 200, {"success": True, "inbox": "main",
                     "conversations": {"count": len(items), "items": items}}

    def _conversation(self, cid: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        conversation = self.world.conversations.get(cid)
        if conversation is None:
            return 404, _error("Conversation not found")
        conversation["unread"] = 0
        return 200, {"success": True, "conversation_id": cid,
                     "messages": conversation["messages"]}

    def _dm_request(self, **kw: Any) -> tuple[int, dict[str, Any]]:
        body = kw["body"]
        message = body.get("message", "")
        if not (body.get("to") or body.get("to_owner")) or not 10 <= len(message) <= 1000:
            return 400, _error("to and a message of 10-1000 characters are required")
        self.world.dm_requests.append(dict(body))
        return 200, {"success": True, "message": "Chat request sent"}

    def _dm_send(self, cid: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        conversation = self.world.conversations.get(cid)
        if conversation is None:
            return 404, _error("Conversation not found")
        conversation["messages"].append({"from": kw["agent"]["name"],
                                         "message": kw["body"].get("message"),
                                         "needs_human_input":
                                             bool(kw["body"].get("needs_human_input"))})
        return 200, {"success": True, "message": "Message sent"}


def _error(error: str, hint: str = "") -> dict[str, Any]:
    return {"success": False, "error": error, **({"hint": hint} if hint else {})}


class Recorder:
    """A second local server that records the requests reaching it (their headers too) and
    answers {}: the other host a redirect points to."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                recorder.seen.append(Seen(time.monotonic(), self.command, self.path,
                                          dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def moltbook(key: str, **agent: Any) -> Iterator[MoltbookServer]:
    """A running server with one agent holding `key`."""
    with MoltbookServer() as server:
        server.add_agent(key, **agent)
        yield server
