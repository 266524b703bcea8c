"""Moltbook through a real `entityd run`: the orchestrator's turns call the Moltbook tools
(a scripted model: tests/peer_model.py's `CALL <tool> <json>`), people use `entityctl
moltbook ...`, and the key, set to a known fake value in the daemon's environment, is
looked for everywhere it must not be: the bus (every subject), the daemon's log, the
sandbox's environment. Moltbook is tests/moltbook_server.py: a local server following
Moltbook's documented API, not Moltbook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from actors.llm import ScriptedLLMServer
from actors.moltbook import MODEL_TOOLS
from bench.rig import edit
from entityd import config as config_mod
from entityd import localauth
from tests.helpers import BIN, REPO, DaemonProc, child_env
from tests.moltbook_server import MoltbookServer
from tests.peer_model import route
from tests.test_agent_e2e import make_entity_config

KEY = "moltbook_sk_FAKE_daemon_key_8e41b7"
DM_TEXT = "hello Ben, a question for your human about the build"
POST_INTERVAL_S = 8.0
pytestmark = pytest.mark.timeout(240)


async def moltbookctl(config: Path, *args: str) -> tuple[int, str, str]:
    """entityctl moltbook ARGS, as a user runs it."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityctl"), "--config", str(config), "moltbook",
        *args, cwd=REPO, env=child_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ask(config: Path, goal: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityctl"), "--config", str(config), "ask", goal, "--quiet",
        env=child_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def call(tool: str, **args: Any) -> str:
    return f"CALL {tool} {json.dumps(args)}"


async def test_moltbook_through_the_orchestrator_and_entityctl(tmp_path: Path) -> None:
    with MoltbookServer() as server:
        server.add_agent(KEY)
        async with ScriptedLLMServer(route) as llm:
            config = make_entity_config(tmp_path, "entity-a", llm.base_url)
            edit(config, 'base_url = "https://www.moltbook.com/api/v1"',
                 f'base_url = "{server.base_url}"')
            edit(config, 'dms = "off"', 'dms = "approve"')
            # Long enough that the "too soon" post below, one entityctl call after the
            # person's, falls inside it on a busy machine too.
            edit(config, "post_interval = 1800.0", f"post_interval = {POST_INTERVAL_S}")
            edit(config, "comment_interval = 20.0", "comment_interval = 0.1")
            settings = config_mod.load(config)
            daemon = DaemonProc(config, tmp_path / "entityd.log",
                                child_env(MOLTBOOK_API_KEY=KEY)).start()
            bus: nats.NATS | None = None
            try:
                await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
                bus = await nats.connect(f"nats://{localauth.read(settings.data_dir)}@"
                                         f"127.0.0.1:{settings.nats.port}")
                seen: list[tuple[str, bytes]] = []

                async def keep(msg: Any) -> None:
                    seen.append((msg.subject, msg.data))

                await bus.subscribe(">", cb=keep)
                await bus.flush()
                await exercise(config, server, llm)
                await bus.flush()
            finally:
                if bus is not None:
                    await bus.close()
                code = await asyncio.to_thread(daemon.terminate)
            assert code == 0, daemon.log()[-2000:]

    # The key crossed no subject of the bus, reached no log line and no event.
    assert seen and any(subject.startswith("fed.evt.entity-a.tool.moltbook_request")
                        for subject, _ in seen)
    assert not [subject for subject, data in seen if KEY.encode() in data]
    assert KEY not in daemon.log()
    # The tool actor's audit events hold no DM text (the goal that asked for the DM is
    # the operator's own words, in its turn's events; that is not the tool's audit).
    tool_events = b"".join(data for subject, data in seen
                           if subject.startswith("fed.evt.entity-a.tool."))
    assert DM_TEXT.encode() not in tool_events


async def exercise(config: Path, server: MoltbookServer, llm: ScriptedLLMServer) -> None:
    # The orchestrator's operator turns are offered the Moltbook tools and use them.
    home = await ask(config, call("moltbook_home"))
    assert home.startswith("done: {") and '"your_account"' in home
    posted = await ask(config, call("moltbook_post", title="From the orchestrator",
                                    content="An entity says hello"))
    assert "the post is published" in posted
    post = next(p for p in server.world.posts.values()
                if p["title"] == "From the orchestrator")
    assert post["verification_status"] == "verified"

    queued = await ask(config, call("moltbook_send_dm", to="BensBot", message=DM_TEXT))
    assert "is queued as" in queued and server.world.dm_requests == []
    dm_id = queued.split("is queued as ")[1].split(",")[0]

    sandbox = await ask(config, call("shell", command="env"))
    assert sandbox.startswith("done: ") and "PATH=" in sandbox
    assert KEY not in sandbox and "MOLTBOOK" not in sandbox

    coded = await ask(config, call("delegate_to_coder", goal="Write add(a, b) in calc.py "
                                   "with a unittest in test_calc.py and run it"))
    assert "coder finished" in coded
    bodies = [r.body for r in llm.requests if r.body and r.body.get("tools")]
    tools_of = [{t["function"]["name"] for t in body["tools"]} for body in bodies]
    orchestrator = [names for names in tools_of if "delegate_to_coder" in names]
    coder = [names for names in tools_of if "write_file" in names
             and "delegate_to_coder" not in names]
    assert orchestrator and all(set(MODEL_TOOLS) <= names for names in orchestrator)
    assert coder and not any(name.startswith("moltbook") for names in coder for name in names)

    # entityctl moltbook ...
    code, out, err = await moltbookctl(config, "status")
    assert code == 0, err
    assert "agent:        entity-a (claimed), karma 5" in out
    assert "DMs:          approve; 1 waiting for approval" in out
    assert KEY not in out + err and "key from $MOLTBOOK_API_KEY" in out

    code, out, err = await moltbookctl(config, "pending")
    assert code == 0 and f"{dm_id}  to agent BensBot" in out and DM_TEXT in out
    code, out, err = await moltbookctl(config, "approve", dm_id)
    assert code == 0, err
    assert out.strip() == f"sent DM {dm_id} to agent BensBot"
    assert server.world.dm_requests == [{"to": "BensBot", "message": DM_TEXT}]
    code, out, err = await moltbookctl(config, "approve", dm_id)
    assert code == 3 and "no DM waits for approval" in err

    code, out, err = await moltbookctl(config, "feed", "--sort", "new")
    assert code == 0 and "'From the orchestrator' in m/general by entity-a" in out
    code, out, err = await moltbookctl(config, "search", "entity says hello")
    assert code == 0 and "'From the orchestrator' by entity-a" in out

    await asyncio.sleep(POST_INTERVAL_S)  # past post_interval since the orchestrator's post
    code, out, err = await moltbookctl(config, "post", "From a person", "--content",
                                       "typed in entityctl", "--submolt", "aithoughts")
    assert code == 0, err
    assert "the post is published" in out
    code, out, err = await moltbookctl(config, "post", "Too soon", "--content", "x")
    assert code == 3 and f"Moltbook allows one post per {POST_INTERVAL_S:g} s" in err, (code, err)
    code, out, err = await moltbookctl(config, "status", "--json")
    assert code == 0 and json.loads(out)["verification_failures"] == 0
    code, out, err = await moltbookctl(config, "reset")
    assert code == 0 and "verification failures in a row: 0 -> 0" in out
    code, out, err = await moltbookctl(config, "register", "entity-a")
    assert code == 3 and "already has a Moltbook key ($MOLTBOOK_API_KEY)" in err


async def test_register_through_entityctl_and_a_missing_key(tmp_path: Path) -> None:
    with MoltbookServer() as server:
        async with ScriptedLLMServer(route) as llm:
            config = make_entity_config(tmp_path, "entity-a", llm.base_url)
            edit(config, 'base_url = "https://www.moltbook.com/api/v1"',
                 f'base_url = "{server.base_url}"')
            edit(config, 'dms = "off"', 'dms = "approve"')
            daemon = DaemonProc(config, tmp_path / "entityd.log", child_env()).start()
            try:
                await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
                code, out, err = await moltbookctl(config, "status")
                assert code == 3
                assert err.startswith("entityctl: no Moltbook key: set $MOLTBOOK_API_KEY in "
                                      "the daemon's environment, or register with "
                                      "`entityctl moltbook register NAME`")

                code, out, err = await moltbookctl(config, "register", "entity-a",
                                                   "--description", "builds small tools")
                assert code == 0, err
                key_file = config.parent / "keys" / "moltbook.key"
                key = key_file.read_text().strip()
                assert key_file.stat().st_mode & 0o777 == 0o600
                assert server.world.agents[key]["description"] == "builds small tools"
                assert "claim URL, for the entity's human: https://www.moltbook.com/claim/" \
                    in out and "verification code: reef-X4B2" in out
                assert key not in out + err

                code, out, err = await moltbookctl(config, "status")
                assert code == 0, err
                assert "agent:        entity-a (pending_claim)" in out
                assert f"key from file {key_file}" in out
                assert "account:      new: first-24 h limits" in out

                # The orchestrator's first turn since the key came is offered the tools.
                queued = await ask(config, call("moltbook_send_dm", to="BensBot",
                                                message=DM_TEXT))
                dm_id = queued.split("is queued as ")[1].split(",")[0]
                code, out, err = await moltbookctl(config, "approve", dm_id)
                assert code == 3 and "blocks DMs in an account's first 24 h" in err
                code, out, err = await moltbookctl(config, "reject", dm_id)
                assert code == 0 and out.strip() == f"dropped DM {dm_id} to agent BensBot"
                code, out, err = await moltbookctl(config, "pending", "--json")
                assert code == 0 and json.loads(out)["pending"] == []
            finally:
                code = await asyncio.to_thread(daemon.terminate)
            assert code == 0, daemon.log()[-2000:]
            assert key not in daemon.log()
            assert server.world.dm_requests == []
