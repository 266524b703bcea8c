"""deploy/start-pair.sh as a user runs it (a wrapper of `entityd up deploy/pair.toml`):
two federated entities on the demo model come up, a killed daemon is started again, Ctrl-C
stops everything, and a second run keeps the keys of the first."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import BIN, child_env, ctl, free_port_range

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "start-pair.sh"
PORTS = 6
# One collaboration cycle of each entity, as events (README, "Quick start: the pair").
CYCLE = ("coder.committed", "peer.report_received", "peer.task_paid", "orchestrator.lessons")
CYCLE_WITHIN_S = 60.0
DEMO_NOTICE = "no {key} in the environment; running it on the scripted demo model (not a model)"


def pair_env(pair_dir: Path, base: int, **extra: str) -> dict[str, str]:
    env = child_env()
    # No model keys, and nothing of the caller's that would change the pair's setup.
    for name in list(env):
        if name.endswith("_API_KEY") or name.startswith(("ENTITYD_", "PAIR_")):
            del env[name]
    env.update(PAIR_DIR=str(pair_dir), PAIR_BASE_PORT=str(base), **extra)
    return env


class Pair:
    """The script as a child process, its output (stdout and stderr) in a file."""

    def __init__(self, pair_dir: Path, base: int, output: Path, **extra: str) -> None:
        self.dir = pair_dir
        self.base = base
        self.output_path = output
        with output.open("ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(SCRIPT)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=pair_env(pair_dir, base, **extra), cwd=REPO,
            )

    def config(self, name: str) -> Path:
        return self.dir / name / "entityd.toml"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_output(self, needle: str, timeout: float = 90.0) -> None:
        poll(lambda: needle in self.output(), timeout,
             f"start-pair.sh did not print {needle!r}", alive=self.proc)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def leftovers(self) -> list[str]:
        """Command lines of processes that belong to this pair."""
        demo_ports = [f"--port {self.base + 4}", f"--port {self.base + 5}"]
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            line = " ".join(a.decode(errors="replace") for a in args if a)
            if not line or cmdline.parent.name == str(os.getpid()):
                continue
            if str(self.dir) in line or (
                "actors.llm.scripted" in line and any(p in line for p in demo_ports)
            ):
                found.append(line)
        return found

    def cleanup(self) -> None:
        """After a failed test: stop the script, then anything of the pair still alive."""
        if self.proc.poll() is None:
            try:
                self.stop(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if str(self.dir) in text:
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def poll(check: Callable[[], bool], timeout: float, message: str,
         alive: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{message}: start-pair.sh exited ({alive.returncode})")
        time.sleep(0.2)
    raise AssertionError(f"{message} within {timeout} s")


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    return tmp_path / "pair"


@pytest.fixture
def started_pair(pair_dir: Path, tmp_path: Path) -> Iterator[Pair]:
    pair = Pair(pair_dir, free_port_range(PORTS), tmp_path / "start-pair.out")
    try:
        pair.wait_output("pair ready")
        yield pair
    except BaseException:
        print(pair.output())
        raise
    finally:
        pair.cleanup()


def test_the_pair_starts_restarts_a_killed_daemon_and_stops_on_ctrl_c(
    started_pair: Pair,
) -> None:
    pair = started_pair
    output = pair.output()
    assert "entity-a: " + DEMO_NOTICE.format(key="MOONSHOT_API_KEY") in output
    assert "entity-b: " + DEMO_NOTICE.format(key="OPENROUTER_API_KEY") in output
    for word in ("status", "peers", "talk entity-b", "watch"):
        assert f"entityctl --config {pair.config('entity-a')} {word}" in output
    status = ctl(pair.config("entity-a"), "status")
    assert status.returncode == 0, status.stderr
    assert "entity-a" in status.stdout
    for name in ("entity-a", "entity-b"):  # the treasurer's starting allowance
        balance = ctl(pair.config(name), "balance", "--json")
        assert balance.returncode == 0, balance.stdout + balance.stderr
        assert json.loads(balance.stdout)["available"] == 1000, balance.stdout

    pid_file = pair.dir / "run" / "entity-b.pid"  # entityd up's: "PID START_TIME"
    killed = int(pid_file.read_text().split()[0])
    os.kill(killed, signal.SIGKILL)
    pair.wait_output("entity-b exited (code 137); restarting", timeout=30)

    def answers_again() -> bool:
        pid = pid_file.read_text().split()[0]
        return pid != str(killed) and ctl(
            pair.config("entity-b"), "--timeout", "2", "status"
        ).returncode == 0

    poll(answers_again, 30, "entity-b did not answer again after it was killed")

    assert pair.stop(signal.SIGINT) == 0
    assert "pair stopped" in pair.output()
    assert pair.leftovers() == []
    assert not pid_file.exists()


def test_a_second_run_keeps_the_first_runs_keys(pair_dir: Path, tmp_path: Path) -> None:
    key_files = [
        pair_dir / name / path
        for name in ("entity-a", "entity-b")
        for path in ("entity.pub", "keys/entity.key", "keys/hub.nk")
    ]
    base = free_port_range(PORTS)
    runs = []
    for run in (1, 2):
        pair = Pair(pair_dir, base, tmp_path / f"run{run}.out", PAIR_DURATION="1")
        try:
            assert pair.proc.wait(120) == 0, pair.output()
        finally:
            pair.cleanup()
        output = pair.output()
        assert "pair ready" in output and "pair stopped" in output, output
        assert pair.leftovers() == []
        runs.append((output, {path: path.read_bytes() for path in key_files}))
    (first_output, first_keys), (second_output, second_keys) = runs
    assert "first run: creating entity-a" in first_output
    assert "first run" not in second_output
    assert second_keys == first_keys
    config = (pair_dir / "entity-a" / "entityd.toml").read_text()
    trusted = 'entity-b = ["talk", "report", "delegate", "wake", "restart"]'
    assert config.splitlines().count(trusted) == 1  # set once, not once per run
    assert f'hub_url = "nats-leaf://127.0.0.1:{base + 1}"' in config
    assert config.count("treasury = ") == 1
    # The allowance was minted once, not once per run: the second run's mint was a retry.
    for name in ("entity-a", "entity-b"):
        assert f"{name}'s allowance: minted 1000 to {name}: entry 1" in first_output
        assert f"{name}'s allowance: retried: the chain holds this mint already" \
            in second_output


def test_left_alone_the_pair_meets_and_works_a_whole_cycle_within_60_s(
    started_pair: Pair,
) -> None:
    """As the README's quick start promises: the two find each other, and on the demo
    model each shows a whole collaboration cycle within 60 s of `pair ready`, read back
    from its EVENTS stream (`entityctl watch --all --since`); each has its page."""
    pair = started_pair
    ready = time.monotonic()
    last: list[subprocess.CompletedProcess[str]] = []

    def sees_entity_b() -> bool:
        result = ctl(pair.config("entity-a"), "peers", "--json")
        last[:] = [result]
        if result.returncode != 0:
            return False
        return any(peer.get("name") == "entity-b" for peer in json.loads(result.stdout))

    try:
        poll(sees_entity_b, 30, "entity-a did not list entity-b in `entityctl peers --json`")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last[0].returncode} {last[0].stderr}") from None

    for name, port in (("entity-a", 8001), ("entity-b", 8002)):
        link = ctl(pair.config(name), "web", "--json")
        assert link.returncode == 0, link.stderr
        assert json.loads(link.stdout)["url"] == f"http://127.0.0.1:{port}/"

    seen: Counter[str] = Counter()
    watch = subprocess.Popen(
        [str(BIN / "entityctl"), "--config", str(pair.config("entity-a")), "watch", "--all",
         "--since", "5m", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=pair_env(pair.dir, pair.base))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout or []],
                     daemon=True).start()
    wanted = {f"{name}:{kind}" for name in ("entity-a", "entity-b") for kind in CYCLE}
    try:
        while not wanted <= set(seen) and time.monotonic() - ready < CYCLE_WITHIN_S:
            try:
                event = json.loads(lines.get(timeout=1.0))
            except queue.Empty:
                continue
            actor = event["src"].split("/")[1]
            seen[f"{event['src'].split('/')[0]}:{actor}.{event['type']}"] += 1
    finally:
        watch.terminate()
        watch.wait(10)
        if watch.stdout:
            watch.stdout.close()
    missing = sorted(wanted - set(seen))
    assert not missing, f"not within {CYCLE_WITHIN_S} s of pair ready: {missing}; seen {seen}"
    assert pair.stop(signal.SIGTERM) == 0
    assert "pair stopped" in pair.output()
    assert pair.leftovers() == []
