"""Federation topology on real processes: a hub and entity leaves with their own JetStream
domains, generated nkey credentials, and the hub's permissions doing the refusing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from bench.rig import Federation, build_leaves
from entityd import federation
from entityd.errors import ConfigError, IdentityError
from tests.helpers import NATS_SERVER, child_env

REPO = Path(__file__).resolve().parent.parent
A, B, C = "entity-a", "entity-b", "entity-c"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    f = build_leaves(tmp_path, (A, B)).start()
    try:
        yield f
    finally:
        f.stop()


@contextlib.asynccontextmanager
async def clients(fed: Federation, *names: str) -> AsyncIterator[list[Client]]:
    """One nats-py client per name, on that entity's leaf, with its reply inbox prefix."""
    opened: list[Client] = []
    try:
        for name in names:
            opened.append(
                await nats.connect(
                    fed.leaves[name].url, inbox_prefix=f"_i.{name}", max_reconnect_attempts=-1,
                    reconnect_time_wait=0.1,
                )
            )
        yield opened
    finally:
        for nc in opened:
            await nc.close()


class Collector:
    """Messages received on a subscription, awaitable by subject."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self._arrived = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self._arrived.set()

    @property
    def subjects(self) -> list[str]:
        return [m.subject for m in self.msgs]

    async def wait_for(self, subject: str, timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            while subject not in self.subjects:
                self._arrived.clear()
                await self._arrived.wait()
        return True


async def until(attempt: Callable[[], Awaitable[Any]], deadline: float = 15.0) -> Any:
    """Retry attempt() until it returns instead of raising; bounded by deadline seconds."""
    end = time.monotonic() + deadline
    while True:
        try:
            return await attempt()
        except (nats.errors.Error, TimeoutError) as exc:
            if time.monotonic() > end:
                raise AssertionError(f"still failing after {deadline} s: {exc!r}") from exc
            await asyncio.sleep(0.05)


async def responder(nc: Client, subject: str, answer: bytes = b"pong") -> None:
    async def reply(msg: Msg) -> None:
        await msg.respond(answer)

    await nc.subscribe(subject, cb=reply)
    await nc.flush()


async def propagated(sender: Client, seen: Collector, subject: str) -> None:
    """Publish probes on subject until one arrives: the receiver's interest reached sender."""

    async def probe() -> None:
        await sender.publish(subject, b"probe")
        await sender.flush()
        try:
            await seen.wait_for(subject, 0.2)
        except TimeoutError:
            raise TimeoutError(f"{subject} did not arrive") from None

    await until(probe)


# -- credentials and rendered configs ------------------------------------------------------


def test_credentials_are_a_0600_user_nkey_in_the_data_dir_and_stable(tmp_path: Path) -> None:
    public, seed = federation.make_entity_credentials(A, tmp_path)
    assert seed == tmp_path / "keys" / "hub.nk"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert stat.S_IMODE(seed.parent.stat().st_mode) == 0o700
    assert seed.read_text().startswith("SU")
    assert public.startswith("U") and federation.check_public_key(public) == public
    assert nkeys.from_seed(seed.read_text().strip().encode()).public_key.decode() == public
    # Asking again shows the same key; it never overwrites.
    assert federation.make_entity_credentials(A, tmp_path) == (public, seed)
    # A separate key from the entity's Ed25519 identity, which the hub never sees.
    assert not (tmp_path / "keys" / "entity.key").exists()
    seed.chmod(0o640)
    with pytest.raises(IdentityError, match="chmod 600"):
        federation.read_seed(seed)


def test_public_names_exist() -> None:
    """The module's public surface is exactly these names: one added or dropped is a choice
    made here, in the open, not a side effect."""
    assert federation.__all__ == [
        "BOOKS_ACCOUNT", "HUB_ACCOUNT", "HUB_DOMAIN", "LEAF_PORT", "READER", "READER_INBOX",
        "SEED_ENV",
        "TREASURER",
        "HubCluster", "Permissions",
        "check_public_key", "entity_permissions", "hub_user_entry", "leaf_env",
        "ledger_in_fed", "main",
        "make_entity_credentials", "parser", "public_key", "read_seed", "reader_credentials",
        "reader_permissions", "render_hub_conf",
        "render_leaf_conf", "seed_path", "treasurer_entry", "treasurer_permissions",
    ]
    assert all(hasattr(federation, name) for name in federation.__all__)
    # Nothing public defined in the module is left out of __all__.
    defined = {name for name, value in vars(federation).items() if not name.startswith("_")
               and getattr(value, "__module__", None) == federation.__name__}
    assert defined <= set(federation.__all__)


def test_bad_inputs_are_refused_with_the_key_named(tmp_path: Path) -> None:
    public, seed = federation.make_entity_credentials(A, tmp_path)
    with pytest.raises(ConfigError, match=r"entity\.name"):
        federation.make_entity_credentials("Entity_A", tmp_path / "x")
    with pytest.raises(ConfigError, match="bad checksum"):
        federation.hub_user_entry(A, public[:-1] + ("A" if public[-1] != "A" else "B"))
    with pytest.raises(ConfigError, match="carries credentials"):
        federation.render_leaf_conf(A, "nats-leaf://leaf_a:secret@hub:7422", seed)
    with pytest.raises(ConfigError, match="hub's JetStream domain"):
        federation.render_leaf_conf(A, "tls://hub:7422", seed, domain=federation.HUB_DOMAIN)
    with pytest.raises(ConfigError, match="twice"):
        federation.render_hub_conf([(A, public), (A, public)], store_dir=tmp_path)
    not_a_user = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()
    (tmp_path / "account.nk").write_text(not_a_user)
    (tmp_path / "account.nk").chmod(0o600)
    with pytest.raises(IdentityError, match="user nkey seed"):
        federation.read_seed(tmp_path / "account.nk")


def test_hub_user_entry_has_exactly_the_design_permissions() -> None:
    public = federation.public_key(
        nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    )
    entry = federation.hub_user_entry(A, public)
    assert f"nkey: {public}" in entry
    assert (
        'publish: { allow: ["fed.evt.entity-a.>", "fed.req.*.entity-a.>", '
        '"fed.cmd.*.entity-a.>", "_i.*.>", "ledger.entity-a", "ledger_read.entity-a", '
        '"$JS.fed_hub.API.DIRECT.GET.LEDGER"] }'
    ) in entry
    assert (
        'subscribe: { allow: ["fed.evt.>", "fed.req.entity-a.>", "fed.cmd.entity-a.>", '
        '"_i.entity-a.>"] }'
    ) in entry


def test_the_books_readers_logins_are_made_once_and_admitted_by_hub_conf(
        tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "entityd.federation", *args],
            capture_output=True, text=True, timeout=30, env=child_env(), cwd=REPO,
        )

    keys = tmp_path / "books-reader"
    made = run("reader-user", "--keys", str(keys))
    assert made.returncode == 0, made.stderr
    fed, books = made.stdout.strip().splitlines()[-1].split(",")
    assert run("reader-user", "--keys", str(keys)).stdout == made.stdout  # kept, not remade
    for account in ("fed", "books"):
        seed = keys / account / "keys" / "hub.nk"
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        assert seed.read_text().strip() not in made.stdout + made.stderr
    public = federation.make_entity_credentials(A, tmp_path / A)[0]
    entity = ("--entity", f"{A}={public}", "--store-dir", str(tmp_path / "hub"),
              "--leaf-host", "127.0.0.1")
    hub = run("hub-conf", *entity, "--reader", f"{fed},{books}")
    assert hub.returncode == 0, hub.stderr
    assert hub.stdout.count(f"# {federation.READER}") == 2 and "ledger_get" not in hub.stdout
    (tmp_path / "hub.conf").write_text(hub.stdout)
    checked = subprocess.run([NATS_SERVER, "-t", "-c", str(tmp_path / "hub.conf")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    bare = run("hub-conf", *entity)
    assert bare.returncode == 0 and "members cannot read the ledger" in bare.stderr
    for wrong in (fed, f"{fed},UNOTAKEY"):
        refused = run("hub-conf", *entity, "--reader", wrong)
        assert refused.returncode == 2 and "--reader" in refused.stderr + refused.stdout, (
            refused.stderr)
    with pytest.raises(ConfigError, match="hub login"):
        federation.render_hub_conf([(federation.READER, public)], store_dir=tmp_path / "h",
                                   leaf_host="127.0.0.1")


def test_cli_prints_the_entry_and_a_hub_conf_that_nats_server_accepts(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "entityd.federation", *args],
            capture_output=True, text=True, timeout=30, env=child_env(), cwd=REPO,
        )

    out = run("hub-user", A, "--data-dir", str(tmp_path / A))
    assert out.returncode == 0, out.stderr
    public = re.search(r"public nkey: (U[A-Z2-7]{55})", out.stdout)
    assert public and f"nkey: {public[1]}" in out.stdout
    assert str(tmp_path / A / "keys" / "hub.nk") in out.stdout
    seed = (tmp_path / A / "keys" / "hub.nk").read_text().strip()
    assert seed not in out.stdout + out.stderr

    entity = ("--entity", f"{A}={public[1]}", "--store-dir", str(tmp_path / "hub"))
    # The default listens on every interface: TLS, or an explicit opt-out (test_federation_tls).
    refused = run("hub-conf", *entity)
    assert refused.returncode == 2 and "--insecure-plain" in refused.stderr, refused.stderr
    hub = run("hub-conf", *entity, "--insecure-plain")
    assert hub.returncode == 0, hub.stderr
    assert "without TLS" in hub.stderr
    (tmp_path / "hub.conf").write_text(hub.stdout)
    checked = subprocess.run(
        [NATS_SERVER, "-t", "-c", str(tmp_path / "hub.conf")], capture_output=True, text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr

    leaf = run("leaf-conf", A, "--data-dir", str(tmp_path / A), "--hub-url", "tls://hub:7422")
    assert leaf.returncode == 0 and "domain: \"entity-a\"" in leaf.stdout, leaf.stderr
    assert seed not in leaf.stdout + leaf.stderr
    bad = run("hub-conf", "--entity", f"{A}=UNOTAKEY", "--store-dir", str(tmp_path / "hub"))
    assert bad.returncode == 2 and "not a public user nkey" in bad.stderr


def test_deploy_examples_are_valid_and_carry_the_design_permissions(tmp_path: Path) -> None:
    """deploy/hub.conf and deploy/leaf.conf.example parse, with their paths made local."""
    hub = (REPO / "deploy" / "hub.conf").read_text()
    for name in (A, B):
        perms = federation.entity_permissions(name)
        for kind, subs in (("publish", perms.publish), ("subscribe", perms.subscribe)):
            allow = ", ".join(f'"{s}"' for s in subs)
            assert f"{kind}: {{ allow: [{allow}] }}" in hub, (name, kind)
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the certificate deploy/hub.conf points at")
    cert, key = tmp_path / "hub.crt", tmp_path / "hub.key"
    make_cert(cert, key)
    local = {
        "/etc/entityd-hub/tls/hub.crt": str(cert),
        "/etc/entityd-hub/tls/hub.key": str(key),
        "/etc/entityd/hub-ca.pem": str(cert),
    }
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    for name in ("hub.conf", "leaf.conf.example"):
        text = (REPO / "deploy" / name).read_text()
        for old, new in local.items():
            text = text.replace(old, new)
        (tmp_path / name).write_text(text)
        checked = subprocess.run(
            [NATS_SERVER, "-t", "-c", str(tmp_path / name)], capture_output=True,
            text=True, timeout=30, env=child_env(**{federation.SEED_ENV: seed}),
        )
        assert checked.returncode == 0, f"deploy/{name}: {checked.stderr}"


# -- real hub and leaves -------------------------------------------------------------------


async def test_events_and_requests_cross_leaves_through_the_hub(fed: Federation) -> None:
    async with clients(fed, A, B) as (a, b):
        events = Collector()
        await b.subscribe("fed.evt.>", cb=events.on_msg)
        await b.flush()
        await propagated(a, events, f"fed.evt.{A}.probe")
        await a.publish(f"fed.evt.{A}.orchestrator.x", b"hello")
        assert await events.wait_for(f"fed.evt.{A}.orchestrator.x", 5)
        assert events.msgs[-1].data == b"hello"

        await responder(b, f"fed.req.{B}.>")
        reply = await until(lambda: a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5))
        assert reply.data == b"pong"
        # The reply travelled back through the hub to A's own inbox.
        assert reply.subject.startswith(f"_i.{A}.")


async def test_an_entity_cannot_publish_as_another_or_leak_local_traffic(
    fed: Federation,
) -> None:
    async with clients(fed, A, B) as (a, b):
        seen = Collector()
        await b.subscribe("fed.evt.>", cb=seen.on_msg)
        await b.subscribe("loc.>", cb=seen.on_msg)
        await b.subscribe(f"fed.req.{B}.>", cb=seen.on_msg)
        await b.flush()
        await propagated(a, seen, f"fed.evt.{A}.probe")

        await a.publish(f"fed.evt.{B}.orchestrator.forged", b"as b")
        await a.publish(f"fed.req.{B}.{C}.talk", b"as c")
        await a.publish(f"loc.{B}.orchestrator.turn", b"local")
        await a.publish(f"fed.evt.{A}.marker", b"")  # same path, so it arrives after them
        assert await seen.wait_for(f"fed.evt.{A}.marker", 5)
        assert [s for s in seen.subjects if not s.endswith(".probe")] == [f"fed.evt.{A}.marker"]


async def test_an_entity_cannot_listen_to_another_entitys_requests_or_replies(
    tmp_path: Path,
) -> None:
    fed = await asyncio.to_thread(build_leaves(tmp_path, (A, B, C)).start)
    try:
        async with clients(fed, A, B, C) as (a, b, c):
            sniffed, markers = Collector(), Collector()
            await a.subscribe(f"fed.req.{B}.>", cb=sniffed.on_msg)
            await a.subscribe(f"fed.cmd.{B}.>", cb=sniffed.on_msg)
            await a.subscribe(f"_i.{C}.>", cb=sniffed.on_msg)
            await a.subscribe("fed.evt.>", cb=markers.on_msg)  # sent to the hub after the others
            await a.flush()
            await propagated(c, markers, f"fed.evt.{C}.probe")

            await responder(b, f"fed.req.{B}.>")
            reply = await until(lambda: c.request(f"fed.req.{B}.{C}.talk", b"hi", timeout=0.5))
            assert reply.data == b"pong"
            await c.publish(f"fed.cmd.{B}.{C}.report", b"secret")
            await c.publish(f"fed.evt.{C}.marker", b"")
            assert await markers.wait_for(f"fed.evt.{C}.marker", 5)
            assert sniffed.msgs == []
    finally:
        fed.stop()


async def test_a_leaf_keeps_working_while_the_hub_is_down_and_rejoins(
    fed: Federation,
) -> None:
    async with clients(fed, A, A, B) as (a, a_local, b):
        await responder(b, f"fed.req.{B}.>", b"from b")
        await responder(a_local, f"loc.{A}.memory.recall", b"local")
        await until(lambda: a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5))
        b_inbox = await b.jetstream().add_stream(
            StreamConfig(name="INBOX", subjects=[f"fed.cmd.{B}.>"])
        )
        assert b_inbox.config.name == "INBOX"

        await asyncio.to_thread(fed.hub.kill)
        local = await a.request(f"loc.{A}.memory.recall", b"", timeout=2)
        assert local.data == b"local"
        # The leaf keeps its own JetStream domain running too.
        assert (await a.jetstream().account_info()).domain == A
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5)
        # A durable command cannot reach B's stream now: the sender must keep it and retry.
        headers = {"Nats-Msg-Id": "report-1"}
        with pytest.raises((nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError)):
            await a.jetstream().publish(f"fed.cmd.{B}.{A}.report", b"r", headers=headers,
                                        timeout=0.5)

        await asyncio.to_thread(fed.hub.start)
        reply = await until(lambda: a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5))
        assert reply.data == b"from b"
        first = await until(
            lambda: a.jetstream().publish(
                f"fed.cmd.{B}.{A}.report", b"r", headers=headers, timeout=1
            )
        )
        again = await a.jetstream().publish(
            f"fed.cmd.{B}.{A}.report", b"r", headers=headers, timeout=1
        )
        assert first.domain == B
        assert (again.seq, again.duplicate) == (first.seq, True)
        # Stored exactly once: nothing from the outage, one copy of the resends.
        assert (await b.jetstream().stream_info("INBOX")).state.messages == 1


async def test_commands_land_in_the_receivers_stream_in_its_own_domain(
    fed: Federation,
) -> None:
    async with clients(fed, A, B) as (a, b):
        await b.jetstream().add_stream(StreamConfig(name="INBOX", subjects=[f"fed.cmd.{B}.>"]))
        js_a = a.jetstream()

        # A PubAck comes back from B's domain through the hub to A's inbox.
        ack = await until(
            lambda: js_a.publish(
                f"fed.cmd.{B}.{A}.report", b"one", headers={"Nats-Msg-Id": "m1"}, timeout=0.5
            )
        )
        assert (ack.stream, ack.domain, ack.seq) == ("INBOX", B, 1)
        # A core publish without a reply subject is stored as well (nobody is told).
        await a.publish(f"fed.cmd.{B}.{A}.wake", b"two")
        # Posing as C: the hub drops it before it reaches B's stream.
        await a.publish(f"fed.cmd.{B}.{C}.restart", b"forged")
        ack = await js_a.publish(
            f"fed.cmd.{B}.{A}.report", b"three", headers={"Nats-Msg-Id": "m3"}, timeout=2
        )
        assert ack.seq == 3
        dup = await js_a.publish(
            f"fed.cmd.{B}.{A}.report", b"one", headers={"Nats-Msg-Id": "m1"}, timeout=2
        )
        assert (dup.seq, dup.duplicate) == (1, True)

        js_b = b.jetstream()
        stored = [await js_b.get_msg("INBOX", seq) for seq in (1, 2, 3)]
        assert [(m.subject, m.data) for m in stored] == [
            (f"fed.cmd.{B}.{A}.report", b"one"),
            (f"fed.cmd.{B}.{A}.wake", b"two"),
            (f"fed.cmd.{B}.{A}.report", b"three"),
        ]
        assert (await js_b.stream_info("INBOX")).state.messages == 3
        # B reaches its own domain by name; A may not use B's JetStream API at all.
        assert (await b.jetstream(domain=B).stream_info("INBOX")).state.messages == 3
        with pytest.raises((nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError)):
            await a.jetstream(domain=B, timeout=1).stream_info("INBOX")


async def test_another_domains_jetstream_api_needs_an_explicit_grant(tmp_path: Path) -> None:
    api = f"$JS.{B}.API.>"
    grants = {
        A: federation.Permissions(publish=(api,)),
        B: federation.Permissions(subscribe=(api,)),
    }
    fed = await asyncio.to_thread(build_leaves(tmp_path, (A, B), grants=grants).start)
    try:
        async with clients(fed, A, B) as (a, b):
            await b.jetstream().add_stream(StreamConfig(name="INBOX", subjects=[f"fed.cmd.{B}.>"]))
            info = await until(lambda: a.jetstream(domain=B, timeout=0.5).stream_info("INBOX"))
            assert info.config.name == "INBOX"
    finally:
        fed.stop()


def make_cert(cert: Path, key: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )


async def test_leaves_join_over_tls(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "hub.crt", tmp_path / "hub.key"
    await asyncio.to_thread(make_cert, cert, key)
    fed = await asyncio.to_thread(build_leaves(tmp_path, (A, B), tls=(cert, key)).start)
    try:
        async with clients(fed, A, B) as (a, b):
            await responder(b, f"fed.req.{B}.>")
            reply = await until(lambda: a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5))
            assert reply.data == b"pong"
        # The hub's leafnode port speaks only TLS, so the leaves that got through used it.
        with socket.create_connection(("127.0.0.1", fed.leaf_port), timeout=5) as s:
            info = s.recv(4096).decode()
        assert info.startswith("INFO ") and json.loads(info[5:])["tls_required"] is True
    finally:
        fed.stop()
