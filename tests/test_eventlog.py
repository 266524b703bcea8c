"""The EVENTS stream (issue 12 part 1): every event kept, read back verified from a time or
after an id, the peers' with --all; `entityctl watch --since` and `--all` as a user runs
them. Real daemons, real nats-servers, real JetStream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import nats
import pytest
from nacl.signing import SigningKey

import protocol
from actors.llm.scripted import ScriptedLLMServer
from bench.rig import build, running
from entityd import config as config_mod
from entityd import localauth
from entityd.client import EntityClient
from entityd.eventlog import stream_name
from protocol import Event, subjects
from tests.helpers import BIN, DaemonProc, ctl, make_entity
from tests.peer_model import route

pytestmark = pytest.mark.timeout(120)
ENTITYCTL = str(BIN / "entityctl")


async def _lines(proc: subprocess.Popen[str], wanted: int, timeout: float = 20.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(lines) < wanted and time.monotonic() < deadline:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline),
                                      max(0.1, deadline - time.monotonic()))
        if not line:
            break
        lines.append(line)
    return lines


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop a watch and return its stderr (the pipes closed)."""
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    return err


def _watch(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([ENTITYCTL, "--config", str(config), "watch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_events_are_kept_and_read_back_verified_from_an_id_and_a_time(
        tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        before = time.time()
        for n in range(3):
            result = ctl(config, "todo", "--add", f"item {n}")
            assert result.returncode == 0, result.stderr
        cfg = config_mod.load(config)
        async with EntityClient(cfg) as client:
            reader = client.event_reader()
            got = []
            async with reader.follow(since=before - 1) as events:
                async for stored in events:
                    if stored.envelope.message.type == "todo_changed":
                        got.append(stored)
                    if len(got) == 3:
                        break
            assert [s.envelope.message.data["status"] for s in got] == ["open"] * 3
            seqs = [s.seq for s in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == 3
            # After an id: exactly what followed it, nothing before, nothing twice.
            async with reader.follow(after=seqs[0]) as events:
                again = [await anext(events), await anext(events)]
            todo = [s for s in again if s.envelope.message.type == "todo_changed"]
            assert todo and todo[0].seq == seqs[1]
            assert all(s.seq > seqs[0] for s in again)

            # A forged event stored on the entity's subject (signed by a stranger's key,
            # with the server's login that any local process could read) is skipped.
            nc = await nats.connect(client.url, token=localauth.read(cfg.data_dir))
            subj = subjects.event(cfg.name, "memory", "todo_changed")
            wire, _ = protocol.seal(SigningKey.generate(), src=f"{cfg.name}/memory", dst="*",
                                    subj=subj, message=Event("todo_changed", "memory",
                                                             {"forged": True}))
            await nc.publish(subj, wire)
            await nc.flush()
            # (read where the reader reads: the entity's own history, EVENTS-<e>-OWN)
            assert await reader.own_stream() == f"{stream_name(cfg.name)}-OWN"
            info = await nc.jetstream().stream_info(await reader.own_stream())
            await nc.close()
            async with reader.follow(after=seqs[-1]) as events:
                result2 = ctl(config, "todo", "--add", "after the forgery")
                assert result2.returncode == 0
                after = [await anext(events)]
            assert all(not s.envelope.message.data.get("forged") for s in after)
            assert after[0].seq > info.state.last_seq  # the forged one, stored, was skipped
            assert reader.skipped >= 1
    finally:
        assert daemon.terminate() == 0


async def test_watch_since_replays_then_follows_and_refuses_a_bad_duration(
        tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        assert ctl(config, "todo", "--add", "before the watch").returncode == 0
        proc = _watch(config, "--since", "5m", "--json")
        try:
            seen: list[dict[str, object]] = []
            while not any(e.get("type") == "todo_changed" for e in seen):
                lines = await _lines(proc, 1)
                assert lines, proc.stderr.read() if proc.stderr else ""
                seen.append(json.loads(lines[0]))
            first = next(e for e in seen if e.get("type") == "todo_changed")
            assert isinstance(first["seq"], int)
            assert ctl(config, "todo", "--add", "during the watch").returncode == 0
            while True:  # then it follows: the new one arrives too
                event = json.loads((await _lines(proc, 1))[0])
                if event.get("type") == "todo_changed":
                    assert event["seq"] > first["seq"]  # type: ignore[operator]
                    break
        finally:
            err = _stop(proc)
        assert "from 20" in err  # the banner says from when
        bad = ctl(config, "watch", "--since", "yesterday")
        assert bad.returncode == 2 and "not a duration" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        assert daemon.terminate() == 0


async def test_watch_all_shows_the_peers_events_and_plain_since_only_its_own(
        tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        async with running(fed):
            await fed.discovered()
            a, b = fed["entity-a"], fed["entity-b"]
            code, _, err = await b.ctl("todo", "--add", "b's own item")
            assert code == 0, err
            everyone = _watch(a.config, "--all", "--since", "10m", "--json")
            own = _watch(a.config, "--since", "10m", "--json")
            try:
                found = None
                while found is None:
                    lines = await _lines(everyone, 1)
                    assert lines, everyone.stderr.read() if everyone.stderr else ""
                    event = json.loads(lines[0])
                    if event["src"] == "entity-b/memory" and event["type"] == "todo_changed":
                        found = event
                # Its own watch, from the same stream, has only entity-a's events.
                code, _, err = await a.ctl("todo", "--add", "a's item")
                assert code == 0, err
                while True:
                    event = json.loads((await _lines(own, 1))[0])
                    assert event["src"].startswith("entity-a/"), event
                    if event["type"] == "todo_changed":
                        break
            finally:
                for proc in (everyone, own):
                    _stop(proc)
