"""Issue 9, attack 7 and part of attack 1, against real nats-servers and real daemons:
an entity's JetStream INBOX holds what each peer may keep waiting there, and its consumer
takes only what the INBOX delivers.

- entity-c (a member with its own key and hub user, default trust) floods entity-b's
  INBOX with validly signed, encrypted reports. entity-b keeps at most
  `peers.inbox_per_sender` of them; the rest are refused to entity-c with the server's
  reason; entity-c's own daemon says its report was refused as full for it and delivers
  it once entity-b has handled the backlog; entity-a's report lands and is handled during
  the flood, and entity-b's checks of entity-a stay within a few times the latency
  measured before it. An operation that does not exist is not stored at all.
- An INBOX made by an older entityd (no limits, every operation) is updated in place when
  the daemon starts: every command in it is handled, nothing is dropped, and the
  per-sender limit reaches its setting once the backlog is gone. A consumer deleted under
  the daemon is made again.
- A delegate that never answers the fetch of its deliverable (entity-b: its daemon
  stopped, its hub login still sending) holds up its own commands only: entity-c's report
  to entity-a is handled within seconds while entity-a's fetch from entity-b waits.
- A deliverable over what its delegator may keep at the delegate fails its task, saying why.
- Messages published on the consumer's delivery inbox from a local connection (the leaf
  does not forward it from the hub): no reply subject, junk, a valid command that the
  INBOX did not deliver, forged ack and status subjects. Each is refused with a reason
  (`not_a_delivery`; a `$JS.ACK` reply the server itself refuses to a publisher), no
  actor of entity-b restarts, and entity-a's commands still land.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

import protocol
from actors.llm.scripted import ScriptedLLMServer
from actors.peer.deliverable import FETCH_TIMEOUT_S
from actors.peer.messages import PeerCheck, PeerCheckResult, Report, TaskUpdate
from bench.rig import ALL, Federation, build, edit, running
from entityd import config as entity_config
from entityd import identity
from entityd.client import EntityClient
from entityd.config import from_mapping
from entityd.errors import ConfigError
from protocol import Sealer
from tests.helpers import (
    DaemonProc,
    NatsServer,
    command_into_inbox,
    make_entity,
    poll,
    start_attacker,
)
from tests.peer_model import route

pytestmark = pytest.mark.timeout(240)

A, B, C = "entity-a", "entity-b", "entity-c"
LIMIT = 20  # entity-b's peers.inbox_per_sender
FLOOD = 1500  # reports entity-c sends
IN_FLIGHT = 32  # publishes the attacker has waiting for their PubAck at once
SPREAD_S = 8.0  # the flood lasts at least this long
REPORT_CHARS = 2000
PROBES = 6
PROBE_EVERY_S = 0.4
SLOWER, SLOWEST = 5, 50  # median and worst check during the flood, times the baseline
PER_SUBJECT_FULL = "maximum messages per subject exceeded"
OPS = ("report", "wake", "restart", "result", "delegate", "task")
JUNK_BYTES = 200_000


def event_data(msg: Msg) -> dict[str, Any]:
    body = msgpack.unpackb(msgpack.unpackb(msg.data, raw=False)[2], raw=False)
    return dict(body["payload"]["data"])


@dataclass
class Tap:
    msgs: list[Msg] = field(default_factory=list)

    async def add(self, msg: Msg) -> None:
        self.msgs.append(msg)

    def data(self) -> list[dict[str, Any]]:
        return [event_data(m) for m in self.msgs]


async def taps(nc: NATS, *subjects: str) -> list[Tap]:
    """A tap on each of `subjects`, subscribed (and flushed) on `nc`."""
    tapped = []
    for subject in subjects:
        tap = Tap()
        await nc.subscribe(subject, cb=tap.add)
        tapped.append(tap)
    await nc.flush()
    return tapped


async def status(client: EntityClient) -> Any:
    return await client.ask("health", protocol.StatusGet(), 10.0)


def restarts(state: Any) -> dict[str, int]:
    return {a.name: a.restarts for a in state.actors}


# ---- the attacker: a process of its own, so its publishing does not slow the probes -----


@dataclass
class Flood:
    """What the attacker process sends: `count` reports from entity-c to `target`, signed
    and encrypted as entity-c's daemon would, put into the target's INBOX with JetStream
    publishes (IN_FLIGHT at a time) over at least `spread_s`; then `bogus` commands on an
    operation that does not exist. With `junk_bytes`, `count` messages of that many random
    bytes on each operation instead: what a member could store before there were limits."""

    url: str
    key_file: str
    target: str
    target_key: str
    count: int
    bogus: int
    spread_s: float
    junk_bytes: int = 0

    def sealed(self) -> list[tuple[str, bytes, str]]:
        if self.junk_bytes:
            return [(protocol.subjects.command(self.target, C, op),
                     secrets.token_bytes(self.junk_bytes), secrets.token_hex(16))
                    for _ in range(self.count) for op in OPS]
        sealer = Sealer(identity.read_key(Path(self.key_file)))
        target_key = bytes.fromhex(self.target_key)
        out = []
        for n in range(self.count + self.bogus):
            op = "report" if n < self.count else "bogus"
            subj = protocol.subjects.command(self.target, C, op)
            text = f"flood {n} " + "x" * REPORT_CHARS
            wire, msg_id = sealer.seal(target_key, src=f"{C}/peer", dst=f"{self.target}/peer",
                                       subj=subj, message=Report(text))
            out.append((subj, wire, msg_id.hex()))
        return out

    async def run(self) -> dict[str, Any]:
        messages = self.sealed()
        nc = await nats.connect(self.url, inbox_prefix=f"_i.{C}")
        js = nc.jetstream()
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(IN_FLIGHT)
        started = time.perf_counter()
        pause = self.spread_s / len(messages)

        async def put(subj: str, wire: bytes, msg_id: str) -> None:
            try:
                await js.publish(subj, wire, timeout=5.0, headers={"Nats-Msg-Id": msg_id})
                outcomes[f"{subj.rsplit('.', 1)[1]}: stored"] += 1
            except nats.js.errors.APIError as exc:
                outcomes[f"{subj.rsplit('.', 1)[1]}: {exc.description}"] += 1
            except (nats.errors.Error, TimeoutError) as exc:
                outcomes[f"{subj.rsplit('.', 1)[1]}: {type(exc).__name__}"] += 1
            finally:
                gate.release()

        async with asyncio.TaskGroup() as tg:
            for subj, wire, msg_id in messages:
                await gate.acquire()
                tg.create_task(put(subj, wire, msg_id))
                await asyncio.sleep(pause)
        seconds = time.perf_counter() - started
        await nc.close()
        return {"outcomes": dict(outcomes), "seconds": seconds}


async def start_flood(flood: Flood) -> asyncio.subprocess.Process:
    return await start_attacker("tests.test_federation_inbox",
                                json.dumps(dataclasses.asdict(flood)))


async def flood_result(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# ---- the settings -------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "key", "says"), [
    ({"inbox_per_sender": 0}, "peers.inbox_per_sender", "greater than 0"),
    ({"inbox_max_bytes": 1_000_000}, "peers.inbox_max_bytes", "twice protocol.max_message"),
    ({"deliverables_ttl": -1.0}, "peers.deliverables_ttl", "greater than 0"),
    ({"deliverables_max_bytes": 1000, "deliverables_per_peer_bytes": 2000},
     "peers.deliverables_per_peer_bytes", "must not exceed peers.deliverables_max_bytes"),
])
def test_the_limits_are_checked(values: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        from_mapping({"entity": {"name": "entity-x"}, "peers": values})
    assert refused.value.key == key and says in str(refused.value), refused.value
    defaults = from_mapping({"entity": {"name": "entity-x"}}).peers
    assert (defaults.inbox_per_sender, defaults.inbox_max_bytes) == (32, 512 * 1024 * 1024)
    env = {"ENTITYD_PEERS_INBOX_PER_SENDER": "7"}
    assert from_mapping({"entity": {"name": "entity-x"}}, environ=env).peers.inbox_per_sender == 7


# ---- the flood ----------------------------------------------------------------------------


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Federation]:
    trust: dict[str, dict[str, Sequence[str]]] = {
        A: {B: ALL, C: ("talk", "report")}, B: {A: ALL, C: ("talk", "report")}}
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B, C], llm_url=llm.base_url, trust=trust)
        edit(fed[B].config, "inbox_per_sender = 32", f"inbox_per_sender = {LIMIT}")
        async with running(fed):
            yield fed


@dataclass
class Sampler:
    """What entity-b's INBOX holds, read from a local connection every few tenths of a
    second: the most entity-c's reports ever took, and the most bytes in all."""

    js: Any
    stream: str
    subject: str
    most: int = 0
    most_bytes: int = 0
    samples: int = 0

    async def run(self) -> None:
        while True:
            info = await self.js.stream_info(self.stream, subjects_filter=self.subject)
            self.most = max(self.most, (info.state.subjects or {}).get(self.subject, 0))
            self.most_bytes = max(self.most_bytes, info.state.bytes)
            self.samples += 1
            await asyncio.sleep(0.1)


async def check(client: EntityClient, peer: str) -> float:
    started = time.perf_counter()
    result = await client.ask("peer", PeerCheck(peer), 10.0)
    assert isinstance(result, PeerCheckResult) and result.state == "alive", result
    return (time.perf_counter() - started) * 1000


async def test_a_member_flooding_an_inbox_keeps_only_its_share_and_the_others_go_on(
    trio: Federation,
) -> None:
    a, b, c = trio[A], trio[B], trio[C]
    await trio.discovered()
    b_pub = identity.read_public(b.data)
    stream = f"INBOX-{B}"
    c_reports = protocol.subjects.command(B, C, "report")
    async with contextlib.AsyncExitStack() as stack:
        b_client = await stack.enter_async_context(EntityClient(entity_config.load(b.config)))
        at_b: NATS = await nats.connect(b.url)
        stack.push_async_callback(at_b.close)
        (received,) = await taps(at_b, f"fed.evt.{B}.peer.report_received")

        before = [await check(b_client, A) for _ in range(PROBES)]
        baseline = statistics.median(before)
        b_before = await status(b_client)

        sampler = Sampler(at_b.jetstream(), stream, c_reports)
        sampling = asyncio.create_task(sampler.run())
        started = time.monotonic()
        proc = await start_flood(Flood(
            c.url, str(identity.key_path(c.data)), B, b_pub.hex(),
            FLOOD, 5, SPREAD_S))

        # While entity-c floods: entity-b checks entity-a; entity-a reports to entity-b;
        # entity-c's own daemon reports to entity-b, into its full share.
        await poll(lambda: _at_least(sampler, LIMIT), timeout=20.0, what="entity-c's share filled")
        a_text, c_text = "entity-a reports during the flood", "entity-c's own daemon reports"
        a_sent = await a.ctl_json("report", B, a_text)
        c_sent = await c.ctl_json("report", B, c_text)
        during = []
        while proc.returncode is None:
            during.append(await check(b_client, A))
            await asyncio.sleep(PROBE_EVERY_S)
        result = await flood_result(proc)
        flood_s = time.monotonic() - started
        after = [await check(b_client, A) for _ in range(PROBES)]

        # entity-a's report landed at once and entity-b handled it during the flood.
        assert a_sent["code"] == "delivered", a_sent
        await poll(lambda: _received(received, A, a_sent["id"]), timeout=30.0,
                    what="entity-a's report handled")
        # entity-c's daemon was told why its report waits, and it lands once entity-b
        # has handled entity-c's backlog.
        assert c_sent["code"] == "queued", c_sent
        assert f"{B}'s INBOX refused it as full for us" in c_sent["text"], c_sent
        await poll(lambda: _received(received, C, c_sent["id"]), timeout=90.0,
                    what="entity-c's own report handled after the backlog")
        sampling.cancel()

        outcomes = Counter(result["outcomes"])
        stored = outcomes["report: stored"]
        refused = outcomes[f"report: {PER_SUBJECT_FULL}"]
        # entity-b held at most LIMIT of entity-c's reports at any time ...
        assert 0 < sampler.most <= LIMIT, sampler
        # ... took in no more than that plus what it handled meanwhile (entity-c's rate
        # limit: 30 at once, then 2 a second) ...
        assert stored <= LIMIT + 30 + 2 * (flood_s + 1), outcomes
        # ... and refused every other one to entity-c, saying why.
        assert stored + refused == FLOOD, outcomes
        assert refused >= FLOOD - (LIMIT + 30 + 2 * (flood_s + 1)), outcomes
        # An operation that does not exist is not stored at all.
        assert not [k for k in outcomes if k.startswith("bogus: stored")], outcomes
        assert sum(v for k, v in outcomes.items() if k.startswith("bogus:")) == 5, outcomes
        info = await at_b.jetstream().stream_info(stream, subjects_filter=">")
        assert not [s for s in info.state.subjects or {} if s.endswith(".bogus")], info
        assert info.config.max_msgs_per_subject == LIMIT

        # entity-b kept answering entity-a in step with the baseline, and nothing restarted.
        for phase, walls in (("during", during), ("after", after)):
            assert statistics.median(walls) <= SLOWER * baseline, (phase, baseline, walls)
            assert max(walls) <= SLOWEST * baseline, (phase, baseline, walls)
        b_after = await status(b_client)
        assert restarts(b_after) == restarts(b_before)

        # ---- the same with junk as large as an envelope may be, on every operation ----
        sampler2 = Sampler(at_b.jetstream(), stream, f"fed.cmd.{B}.{C}.>")
        sampling = asyncio.create_task(sampler2.run())
        proc = await start_flood(Flood(
            c.url, str(identity.key_path(c.data)), B, b_pub.hex(),
            LIMIT + 10, 0, 3.0, junk_bytes=JUNK_BYTES))
        a_sent2 = await a.ctl_json("report", B, "entity-a reports during the junk flood")
        junk_result = await flood_result(proc)
        junk = Counter(junk_result["outcomes"])
        await asyncio.sleep(0.5)
        sampling.cancel()
        assert a_sent2["code"] == "delivered", a_sent2
        await poll(lambda: _received(received, A, a_sent2["id"]), timeout=30.0,
                    what="entity-a's report handled during the junk flood")
        held = await at_b.jetstream().stream_info(stream, subjects_filter=f"fed.cmd.{B}.{C}.>")
        assert all(n <= LIMIT for n in (held.state.subjects or {}).values()), held.state
        for op in OPS:
            assert junk[f"{op}: stored"] + junk[f"{op}: {PER_SUBJECT_FULL}"] == LIMIT + 10, junk
        # Stored: LIMIT per operation, and what entity-b handled meanwhile at entity-c's
        # rate (30 at once, then 2 a second).
        taken = sum(junk[f"{op}: stored"] for op in OPS)
        assert taken <= len(OPS) * LIMIT + 30 + 2 * (junk_result["seconds"] + 2), junk
        # What entity-c could make entity-b store: LIMIT per operation, envelope-sized.
        ceiling = len(OPS) * LIMIT * (JUNK_BYTES + 1024) + 2 * LIMIT * 4096
        assert sampler2.most_bytes <= ceiling, (sampler2.most_bytes, ceiling)
        assert restarts(await status(b_client)) == restarts(b_before)

        print(f"\nentity-c flooded entity-b with {FLOOD} reports of {REPORT_CHARS} chars "
              f"in {result['seconds']:.1f} s: {dict(outcomes)}")
        print(f"  entity-b held at most {sampler.most} of them (limit {LIMIT}), "
              f"{sampler.most_bytes} bytes in its INBOX at most ({sampler.samples} samples)")
        print(f"  entity-b checking entity-a: baseline median {baseline:.1f} ms; during "
              f"n={len(during)} median {statistics.median(during):.1f} ms, max "
              f"{max(during):.1f} ms; after median {statistics.median(after):.1f} ms")
        print(f"  entity-c's daemon was told: {c_sent['text']}")
        print(f"then {LIMIT + 10} messages of {JUNK_BYTES} random bytes on each of "
              f"{len(OPS)} operations: {dict(junk)}")
        print(f"  entity-b's INBOX held at most {sampler2.most_bytes} bytes "
              f"(ceiling {ceiling}); entity-c's subjects then: {held.state.subjects}")


async def _at_least(sampler: Sampler, count: int) -> bool:
    return sampler.most >= count


async def _received(tap: Tap, peer: str, msg_id: str) -> bool:
    return any(e["peer"] == peer and e["id"] == msg_id for e in tap.data())


# ---- a delegate that holds its delivery ---------------------------------------------------


async def test_a_delegate_stalling_its_delivery_holds_up_no_other_members_commands(
    trio: Federation,
) -> None:
    """entity-a delegates to entity-b, whose daemon then stands still (SIGSTOP: a hostile
    delegate's daemon would simply not answer); entity-b's hub login says the task is
    completed with a deliverable to fetch. entity-a asks entity-b for its first piece and
    waits up to FETCH_TIMEOUT_S for an answer that never comes, then again, for as long as
    entity-b stays silent. Meanwhile entity-c's report to entity-a must be handled within
    seconds: one member's commands wait for that member only."""
    a, b, c = trio[A], trio[B], trio[C]
    await trio.discovered()
    assert b.daemon.proc is not None
    os.kill(b.daemon.proc.pid, signal.SIGSTOP)
    try:
        offered = await a.ctl_json("delegate", B, "a task whose delivery will stall")
        assert offered["ok"], offered
        task_id = offered["id"]
        async with contextlib.AsyncExitStack() as stack:
            at_a: NATS = await nats.connect(a.url)
            stack.push_async_callback(at_a.close)
            received, fetching = await taps(at_a, f"fed.evt.{A}.peer.report_received",
                                            f"fed.req.{B}.{A}.fetch")
            await command_into_inbox(b, a, "task", TaskUpdate(
                task_id, "completed", "done, fetch it", size=300_000, sha256="0" * 64))
            await poll(lambda: _some(fetching), timeout=20.0, what="entity-a fetching")
            sent = time.monotonic()
            c_sent = await c.ctl_json("report", A, "entity-c reports while entity-b stalls")
            assert c_sent["code"] == "delivered", c_sent
            await poll(lambda: _received(received, C, c_sent["id"]),
                       timeout=FETCH_TIMEOUT_S * 2, what="entity-c's report handled")
            waited = time.monotonic() - sent
            print(f"\nentity-c's report handled {waited:.1f} s after it was sent, entity-a "
                  f"fetching from a silent entity-b ({FETCH_TIMEOUT_S:g} s per try)")
            assert waited < FETCH_TIMEOUT_S / 3, (
                f"entity-c's report waited {waited:.1f} s behind entity-b's delivery")
            tasks = await a.ctl_json("tasks")
            mine = next(t for t in tasks if t["task_id"] == task_id)
            assert mine["state"] not in ("delivered", "completed"), mine  # still fetching
    finally:
        os.kill(b.daemon.proc.pid, signal.SIGCONT)


async def _some(tap: Tap) -> bool:
    return bool(tap.msgs)


# ---- an older INBOX ---------------------------------------------------------------------


OLD = 3 * 10  # commands waiting in the older INBOX: three times the per-sender limit


async def test_an_older_inbox_is_updated_in_place_and_keeps_every_command(
    tmp_path: Path,
) -> None:
    x, p = "entity-x", "entity-p"
    server = NatsServer(tmp_path / "nats").start()
    peer_dir = tmp_path / "keys"
    peer_dir.mkdir()
    identity.create(peer_dir)
    key = identity.read_key(identity.key_path(peer_dir))
    async with ScriptedLLMServer(route) as llm:
        config = make_entity(tmp_path, x, nats_url=server.url)
        edit(config, 'provider = "moonshot"', 'provider = "scripted"')
        edit(config, 'base_url = ""', f'base_url = "{llm.base_url}"')
        edit(config, "inbox_per_sender = 32", "inbox_per_sender = 10")
        edit(config, "\n[peer_keys]\n",
             f'\n[peer_keys]\n{p} = "{bytes(key.verify_key).hex()}"\n')
        x_pub = identity.read_public(config.parent)
        nc = await nats.connect(server.url)
        daemon = DaemonProc(config, tmp_path / "x.log")
        try:
            js = nc.jetstream()
            stream = f"INBOX-{x}"
            # The INBOX and its consumer as entityd made them before they had limits.
            await js.add_stream(StreamConfig(
                name=stream, subjects=[protocol.subjects.command(x, "*", "*")],
                retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                duplicate_window=120.0, max_msg_size=2 * 1024 * 1024))
            await js.add_consumer(stream, ConsumerConfig(
                durable_name="peer", name="peer", ack_policy=AckPolicy.EXPLICIT,
                ack_wait=60.0, max_ack_pending=1000,
                filter_subject=protocol.subjects.command(x, "*", "*")))
            ids = set()
            for n in range(OLD):
                subj = protocol.subjects.command(x, p, "report")
                wire, msg_id = Sealer(key).seal(x_pub, src=f"{p}/peer", dst=f"{x}/peer",
                                                subj=subj, message=Report(f"old report {n}"))
                await js.publish(subj, wire, headers={"Nats-Msg-Id": msg_id.hex()})
                ids.add(msg_id.hex())
            bogus = protocol.subjects.command(x, p, "bogus")
            wire, _ = Sealer(key).seal(x_pub, src=f"{p}/peer", dst=f"{x}/peer", subj=bogus,
                                       message=Report("on an operation there is not"))
            await js.publish(bogus, wire)
            assert (await js.stream_info(stream)).state.messages == OLD + 1

            received, rejected = Tap(), Tap()
            await nc.subscribe(f"fed.evt.{x}.peer.report_received", cb=received.add)
            await nc.subscribe(f"fed.evt.{x}.peer.rejected", cb=rejected.add)
            await nc.flush()
            daemon.start()
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 40.0)

            async def all_handled() -> bool:
                return {e["id"] for e in received.data() if e["peer"] == p} >= ids

            await poll(all_handled, timeout=60.0, what="every older report handled")
            assert len({e["id"] for e in received.data()}) == OLD
            await poll(lambda: _reason(rejected, "unknown_kind", bogus), timeout=20.0,
                        what="the older command on a made-up operation refused")
            assert '"inbox_limit_deferred"' in daemon.log()

            async def tightened() -> StreamConfig | None:
                config = (await js.stream_info(stream)).config
                return config if config.max_msgs_per_subject == 10 else None

            limits = await poll(tightened, timeout=30.0, what="the per-sender limit at its setting")
            assert limits.discard == "new" and limits.discard_new_per_subject, limits
            assert limits.max_bytes == 512 * 1024 * 1024, limits
            assert set(limits.subjects or ()) == {
                protocol.subjects.command(x, "*", op)
                for op in ("report", "wake", "restart", "result", "delegate", "task")}
            assert (await js.stream_info(stream)).state.messages == 0

            # The consumer deleted under it: a pull says there is none, and it is made
            # again; a command sent meanwhile waits in the stream and is handled.
            await js.delete_consumer(stream, "peer")
            subj = protocol.subjects.command(x, p, "report")
            wire, msg_id = Sealer(key).seal(x_pub, src=f"{p}/peer", dst=f"{x}/peer",
                                            subj=subj, message=Report("after the consumer"))
            await js.publish(subj, wire, headers={"Nats-Msg-Id": msg_id.hex()})
            await poll(lambda: _received(received, p, msg_id.hex()), timeout=40.0,
                        what="a report handled by the consumer made again")
            assert '"inbox_consumer_missing"' in daemon.log()
        finally:
            await nc.close()
            if daemon.proc is not None:
                assert daemon.terminate() == 0, daemon.log()[-3000:]
            server.stop()


async def _reason(tap: Tap, reason: str, subject: str) -> bool:
    return any(e["reason"] == reason and e["subject"] == subject for e in tap.data())


# ---- the consumer's delivery inbox --------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Federation]:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            yield fed


async def delivery_inbox(nc: NATS, stream: str) -> str:
    """The consumer's delivery inbox, from the reply subject of its next pull."""
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def pulled(msg: Msg) -> None:
        if not found.done():
            found.set_result(msg.reply)

    sub = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.peer", cb=pulled)
    try:
        return await asyncio.wait_for(found, 10.0)
    finally:
        await sub.unsubscribe()


async def test_what_is_published_on_the_consumers_inbox_is_refused_and_crashes_nothing(
    pair: Federation,
) -> None:
    a, b = pair[A], pair[B]
    await pair.discovered()
    a_key = identity.read_key(identity.key_path(a.data))
    b_pub = identity.read_public(b.data)
    errors: list[Exception] = []

    async def server_said(exc: Exception) -> None:
        errors.append(exc)

    # A local client of entity-b's server: only it can reach the delivery inbox.
    local = await nats.connect(b.url, error_cb=server_said)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(local.close)
        b_client = await stack.enter_async_context(EntityClient(entity_config.load(b.config)))
        received, rejected = Tap(), Tap()
        await local.subscribe(f"fed.evt.{B}.peer.report_received", cb=received.add)
        await local.subscribe(f"fed.evt.{B}.peer.rejected", cb=rejected.add)
        await local.flush()
        before = await status(b_client)
        first = await a.ctl_json("report", B, "before the injection")
        await poll(lambda: _received(received, A, first["id"]), timeout=30.0,
                   what="a report handled")

        inbox = await delivery_inbox(local, f"INBOX-{B}")
        assert inbox.startswith(f"_l.{B}."), inbox  # never forwarded to or from the hub
        subj = protocol.subjects.command(B, A, "report")
        valid, _ = Sealer(a_key).seal(b_pub, src=f"{A}/peer", dst=f"{B}/peer", subj=subj,
                                      message=Report("INJECTED, never delivered by the INBOX"))
        counted = [  # (data, reply, headers): each refused by entity-b as not_a_delivery
            (b"", None, None),  # what crashed the peer actor before
            (b"junk", None, None),
            (valid, None, None),  # a valid command of entity-a, not from the stream
            (valid, "$js.ack.INBOX-entity-b.peer.1.1.1.1.0", None),  # not the ack namespace
            (b"x", "$JS.ACKX.INBOX-entity-b.peer.1.1.1.1.0", None),
            (b"x", f"_i.{A}.somewhere", None),
            (b"data", None, {"Status": "404", "Description": "No Messages"}),
        ]
        counted += [(b"flood %d" % n, None, None) for n in range(500)]
        for data, reply, headers in counted:
            await local.publish(inbox, data, reply=reply or "", headers=headers)
        # Never acted on: statuses end nothing (the pull's own deadline does).
        for code in ("503", "404", "408", "409"):
            await local.publish(inbox, b"", headers={"Status": code, "Description": "forged"})
        # An ack subject of entity-b's consumer as a reply: the server refuses the publish.
        await local.publish(inbox, valid, reply=f"$JS.ACK.INBOX-{B}.peer.1.1.1.1.0")
        await local.flush()

        async def all_counted() -> Any:
            state = await status(b_client)
            seen = state.rejected.get("not_a_delivery", 0) - before.rejected.get(
                "not_a_delivery", 0)
            return state if seen >= len(counted) else None

        after = await poll(all_counted, timeout=30.0, what="every injected message refused")
        refused = after.rejected.get("not_a_delivery", 0) - before.rejected.get(
            "not_a_delivery", 0)
        forged_ack = [e for e in errors if "$js.ack.inbox-" in str(e).lower()]
        # The forged ack reply was refused by the server, or else by entity-b.
        assert forged_ack or refused == len(counted) + 1, (errors, refused)
        if forged_ack:
            assert refused == len(counted), refused
        details = {e["detail"] for e in rejected.data() if e["reason"] == "not_a_delivery"}
        assert any("published on the delivery inbox" in d for d in details), details
        assert restarts(after) == restarts(before), (restarts(before), restarts(after))

        # The consumer goes on: entity-a's next report lands and is handled; the injected
        # command never was.
        second = await a.ctl_json("report", B, "after the injection")
        assert second["code"] == "delivered", second
        await poll(lambda: _received(received, A, second["id"]), timeout=30.0,
                   what="a report handled")
        hits = await b.ctl_json("memory", "search", "INJECTED")
        assert not [h for h in hits["hits"] if "INJECTED" in h["text"]], hits
        assert restarts(await status(b_client)) == restarts(before)
        print(f"\n{len(counted)} messages injected on {inbox} refused as not_a_delivery; "
              f"the forged $JS.ACK reply: {forged_ack[0] if forged_ack else 'refused by b'}")


# ---- the object store of deliverables -------------------------------------------------


async def test_a_deliverable_over_the_room_for_its_delegator_fails_its_task(
    tmp_path: Path,
) -> None:
    """entity-b may keep 200 000 bytes of deliverables for entity-a; the BIG task's patch
    (30 000 lines, past one envelope) does not fit, so the task fails, saying why, on both
    sides, and nothing is kept. The bucket has its total and TTL."""
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        for member in fed.members.values():  # 256 KiB envelopes: the patch goes to the store
            edit(member.config, "max_message_bytes = 1048576", "max_message_bytes = 262144")
        edit(fed[B].config, "deliverables_max_bytes = 536870912",
             "deliverables_max_bytes = 10000000")
        edit(fed[B].config, "deliverables_per_peer_bytes = 134217728",
             "deliverables_per_peer_bytes = 200000")
        edit(fed[B].config, "deliverables_ttl = 604800.0", "deliverables_ttl = 3600.0")
        async with running(fed):
            await fed.discovered()
            a, b = fed[A], fed[B]
            offered = await a.ctl_json("delegate", B, "BIG numbered lines")
            assert offered["ok"], offered

            async def ended(member: Any, direction: str) -> Any:
                tasks = await member.ctl_json("tasks")
                return next((t for t in tasks if t["direction"] == direction
                             and t["state"] in ("delivered", "completed", "failed")), None)

            theirs = await poll(lambda: ended(b, "in"), timeout=120.0,
                                what="entity-b ended the task")
            mine = await poll(lambda: ended(a, "out"), timeout=30.0, what="entity-a heard the end")
            for task in (theirs, mine):
                assert task["state"] == "failed", task
                assert "no room for the deliverable" in task["note"], task
                assert "peers.deliverables_per_peer_bytes" in task["note"], task
            nc = await nats.connect(b.url)
            try:
                info = await nc.jetstream().stream_info("OBJ_deliverables")
            finally:
                await nc.close()
            assert info.config.max_bytes == 10_000_000, info.config
            assert info.config.max_age == 3600.0, info.config
            assert info.state.bytes == 0, info.state
            print(f"\nentity-b refused to keep the deliverable: {theirs['note']}")


if __name__ == "__main__":  # the attacker process: python -m tests.test_federation_inbox
    print(json.dumps(asyncio.run(Flood(**json.loads(sys.argv[1])).run())))
