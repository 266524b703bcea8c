"""`entityd up FILE` as a user runs it: three entities from one small file come up and see
each other with their allowances; a killed daemon and a killed hub are started again; a
killed `entityd up` takes its children with it and the next `up` on the same dir starts
cleanly; a second `up` on a running dir is refused naming the first; Ctrl-C, SIGTERM and
`entityd down` stop everything with exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entityd import config as config_mod
from entityd.app.up import spec as spec_mod
from entityd.app.up.plan import prepare
from tests.helpers import BIN, child_env, ctl, poll

pytestmark = pytest.mark.timeout(150)

NAMES = ("ea", "eb", "ec")
ALLOWANCE, EC_ALLOWANCE = 250, 100


def federation_file(tmp_path: Path) -> Path:
    path = tmp_path / "trio.toml"
    path.write_text(f"""
[federation]
dir = "{tmp_path / 'fed'}"
allowance = {ALLOWANCE}
heartbeat = 0.5

[entities.ea]
provider = "demo"

[entities.eb]
provider = "moonshot"   # no key in the environment: the demo model
mission = "Test \\"up\\""

[entities.ec]
allowance = {EC_ALLOWANCE}
""")
    return path


class Up:
    """`entityd up FILE` as a child process, its output in a file."""

    def __init__(self, file: Path, output: Path) -> None:
        self.file = file
        self.dir = file.parent / "fed"
        self.output_path = output
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Up:
        env = child_env()
        for name in list(env):
            if name.endswith("_API_KEY") or name.startswith("ENTITYD_"):
                del env[name]
        with self.output_path.open("ab") as out:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                str(BIN / "entityd"), "up", str(self.file), stdout=out,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env)
        return self

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    async def wait_output(self, needle: str, timeout: float = 60.0, count: int = 1) -> None:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"entityd up exited ({self.proc.returncode}) before "
                                     f"{needle!r}:\n{self.output()}")
            return self.output().count(needle) >= count

        await poll(seen, timeout=timeout, every=0.1, what=lambda: f"{needle!r} in\n"
                   + self.output())

    def config(self, name: str) -> Path:
        return self.dir / name / "entityd.toml"

    def pid(self, name: str) -> int:
        return int((self.dir / "run" / f"{name}.pid").read_text().split()[0])

    async def ctl_json(self, name: str, *args: str) -> object:
        result = await asyncio.to_thread(ctl, self.config(name), *args, "--json", timeout=20)
        return json.loads(result.stdout) if result.returncode == 0 else None

    async def stop(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(60):
            return await self.proc.wait()

    def leftovers(self) -> list[str]:
        """The processes running from, or in, the federation's dir."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if str(self.dir) in line or cwd.startswith(str(self.dir)):
                found.append(f"{proc.name}: {line}")
        return found

    async def gone(self) -> None:
        await poll(lambda: not self.leftovers(), timeout=40,
                   what=lambda: f"nothing left running, but: {self.leftovers()}")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        for line in self.leftovers():
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except (OSError, ValueError):
                continue


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Up]:
    up = await Up(federation_file(tmp_path), tmp_path / "up.out").start()
    try:
        await up.wait_output("trio ready")
        yield up
    except BaseException:
        print(up.output())
        raise
    finally:
        up.cleanup()


async def command(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityd"), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=child_env())
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def test_three_entities_see_each_other_survive_kills_and_stop_on_ctrl_c(
    trio: Up,
) -> None:
    up = trio
    for name in NAMES:
        async def sees_the_others(name: str = name) -> bool:
            peers = await up.ctl_json(name, "peers")
            present = {p["name"] for p in peers or [] if p.get("present")}
            return present >= set(NAMES) - {name}

        await poll(sees_the_others, timeout=30, what=f"{name} lists the other two present")
        balance = await up.ctl_json(name, "balance")
        assert balance is not None
        assert balance["available"] == (EC_ALLOWANCE if name == "ec" else ALLOWANCE)
    config = up.config("eb").read_text()
    assert 'mission = "Test \\"up\\""' in config
    assert "entityctl --config " + str(up.config("ea")) + " peers" in up.output()

    code, listing = await command("ps", str(up.file))
    assert code == 0, listing
    for name in ("hub", "demo-ea", "ea", "eb", "ec"):
        assert any(line.split()[:1] == [name] and "ready" in line
                   for line in listing.splitlines()), listing

    code, refused = await command("up", str(up.file))  # a second `up` on the same dir
    assert code == 2, refused
    assert f"running `entityd up` (pid {up.proc.pid if up.proc else 0})" in refused
    assert f"entityd down {up.file}" in refused and "Traceback" not in refused

    os.kill(up.pid("ec"), signal.SIGKILL)
    await up.wait_output("ec exited (code 137); restarting")
    await up.wait_output("ec is ready again")
    os.kill(up.pid("hub"), signal.SIGKILL)
    await up.wait_output("hub exited (code 137); restarting")
    await up.wait_output("hub is ready again")

    async def ea_sees_ec() -> bool:  # through the restarted hub, to the restarted daemon
        peers = await up.ctl_json("ea", "peers")
        return any(p["name"] == "ec" and p.get("present") for p in peers or [])

    await poll(ea_sees_ec, timeout=30, what="ea sees ec again")

    assert await up.stop(signal.SIGINT) == 0
    assert "trio stopped" in up.output() and "Traceback" not in up.output()
    assert up.leftovers() == []
    assert list((up.dir / "run").glob("*.pid")) == []


async def test_a_killed_up_takes_its_children_and_the_next_one_starts_cleanly(
    trio: Up, tmp_path: Path,
) -> None:
    first = trio
    assert first.leftovers()
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    await first.gone()

    second = await Up(first.file, tmp_path / "second.out").start()
    try:
        await second.wait_output("trio ready")
        assert "first run" not in second.output()
        assert "leftovers" not in second.output()
        # `entityd down` sends the running `up` SIGTERM and waits for it.
        code, said = await command("down", str(second.file))
        assert code == 0, said
        assert second.proc is not None
        async with asyncio.timeout(10):
            assert await second.proc.wait() == 0
        assert "trio stopped" in second.output() and "Traceback" not in second.output()
        assert second.leftovers() == []
        code, listing = await command("ps", str(second.file))
        assert code == 3 and "not running" in listing, listing
    except BaseException:
        print(second.output())
        raise
    finally:
        second.cleanup()


async def test_sigterm_stops_everything_with_exit_0(trio: Up) -> None:
    assert await trio.stop(signal.SIGTERM) == 0
    assert trio.output().count("trio stopped") == 1
    assert trio.leftovers() == []


async def test_a_wrong_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[entities.ea]\nprovider = "gpt-17"\n')
    code, said = await command("up", str(path))
    assert code == 2
    assert said.strip().count("\n") == 0, said
    assert "entities.ea.provider" in said and "use one of" in said and "demo" in said


def test_the_file_owns_the_trust_among_its_entities(tmp_path: Path) -> None:
    """A peer taken out of an entity's trust in the file is taken out of its entityd.toml
    on the next start, not left granted from an earlier one."""
    path = tmp_path / "two.toml"
    path.write_text('[federation]\ndir = "fed"\n\n[entities.entity-a]\nprovider = "demo"\n\n'
                    '[entities.entity-b]\nprovider = "demo"\n')
    prepare(spec_mod.load(path))
    config = tmp_path / "fed" / "entity-a" / "entityd.toml"
    assert config_mod.load(config).trust["entity-b"] == config_mod.PEER_PERMISSIONS
    path.write_text(path.read_text().replace(
        '[entities.entity-a]\nprovider = "demo"\n',
        '[entities.entity-a]\nprovider = "demo"\ntrust = {}\n'))
    prepare(spec_mod.load(path))
    assert "entity-b" not in config_mod.load(config).trust
    # The other way round is untouched: entity-b still trusts entity-a fully.
    other = config_mod.load(tmp_path / "fed" / "entity-b" / "entityd.toml")
    assert other.trust["entity-a"] == config_mod.PEER_PERMISSIONS
