"""TLS between the leaves and the hub: a hub bound beyond loopback speaks only TLS unless
told otherwise, a leaf dials a hub beyond loopback only over TLS unless told otherwise, and
a TLS link pins the hub's CA. Real nats-servers on loopback do the accepting and refusing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nkeys
import pytest
import structlog
from nats.aio.msg import Msg

from bench.rig import edit, edited, leaf_server
from entityd import config as config_mod
from entityd import federation, hublink
from entityd.daemon import leaf_server_config
from entityd.errors import ConfigError
from tests.helpers import BIN, NATS_SERVER, ServerProcess, child_env, free_port, make_entity

REPO = Path(__file__).resolve().parent.parent
A, B = "entity-a", "entity-b"
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl makes the hub's CA and certificate"
)


def federation_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entityd.federation", *args],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=REPO,
    )


def nats_check(conf: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NATS_SERVER, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30,
        env=child_env(**env),
    )


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


# -- which hub URLs a leaf may dial ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LocalHost.", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
     ("hub.example.net", False), ("localhost.example.net", False), ("128.0.0.1", False)],
)
def test_loopback_means_this_machine_only(host: str, loopback: bool) -> None:
    assert hublink.is_loopback(host) is loopback


@pytest.mark.parametrize(
    "url", ["nats-leaf://hub.example.net:7422", "nats://10.0.0.5:7422", "ws://hub:8080",
            "nats-leaf://127.0.0.1:7422,nats-leaf://10.0.0.6:7422"],
)
def test_a_plain_hub_beyond_loopback_is_refused_naming_the_key_and_the_fix(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        hublink.hub_link(url)
    assert caught.value.key == "nats.hub_url"
    for fix in ("tls://", "nats.hub_ca_file", "nats.hub_insecure = true"):
        assert fix in caught.value.problem


@pytest.mark.parametrize(
    "url", ["nats-leaf://127.0.0.1:7422", "nats-leaf://localhost:7422", "nats://[::1]:7422"]
)
def test_a_plain_hub_on_loopback_is_allowed_without_a_tls_block(url: str) -> None:
    assert hublink.hub_link(url) == hublink.HubLink((url,), tls=False)
    with structlog.testing.capture_logs() as logged:
        text = federation.render_leaf_conf(A, url, Path("hub.nk"))
    assert "tls" not in text.split("remotes", 1)[1]
    assert logged == []


def test_every_tls_link_carries_a_tls_block_pinning_the_ca_if_given() -> None:
    """A bare tls:// URL is not enough: nats-server dialled it in clear to a hub that
    offered no TLS (test_a_leaf_never_falls_back_to_plain_tcp below)."""
    seed = Path("hub.nk")
    public = federation.render_leaf_conf(A, "tls://hub.example.net:7422", seed)
    assert "tls {}" in public
    pinned = federation.render_leaf_conf(A, "tls://hub.example.net:7422", seed,
                                         hub_ca_file="/etc/entityd/hub-ca.pem")
    assert 'tls { ca_file: "/etc/entityd/hub-ca.pem" }' in pinned
    # A CA file makes any scheme TLS: the block is in the remote, whatever the URL says.
    assert hublink.hub_link("nats-leaf://hub:7422", hub_ca_file="/ca.pem").tls
    assert hublink.hub_link("wss://hub:443").tls
    with pytest.raises(ConfigError, match="mixes TLS and plain"):
        hublink.hub_link("tls://hub-1:7422,nats-leaf://hub-2:7422")


def test_nats_hub_insecure_allows_a_plain_remote_hub_with_a_warning() -> None:
    url = "nats-leaf://10.0.0.5:7422"
    assert hublink.hub_link(url, hub_insecure=True).in_clear == (url,)
    # Config load let it through (test_config_refuses_a_plain_remote_hub_at_load); the
    # daemon's leaf config then says so, and so does its log.
    with structlog.testing.capture_logs() as logged:
        text = federation.render_leaf_conf(A, url, Path("hub.nk"))
    assert "IN CLEAR, by nats.hub_insecure" in text
    assert logged == [{"event": "hub_link_in_clear", "log_level": "warning", "urls": [url],
                       "allowed_by": "nats.hub_insecure"}]
    # Over TLS the flag changes nothing and nobody is warned.
    assert hublink.hub_link("tls://10.0.0.5:7422", hub_insecure=True).in_clear == ()
    with structlog.testing.capture_logs() as logged:
        federation.render_leaf_conf(A, "tls://10.0.0.5:7422", Path("hub.nk"))
    assert logged == []


@pytest.mark.parametrize(
    "url", ["tls://", "nats-leaf://:7422", "tls://hub:port", "https://hub:7422"]
)
def test_a_hub_url_without_a_usable_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"nats\.hub_url"):
        hublink.hub_link(url, hub_insecure=True)


# -- the entity's config --------------------------------------------------------------------


def entity_config(tmp_path: Path, nats: str) -> Path:
    path = tmp_path / config_mod.CONFIG_NAME
    path.write_text(f'[entity]\nname = "{A}"\n[nats]\n{nats}')
    return path


def test_config_refuses_a_plain_remote_hub_at_load(tmp_path: Path) -> None:
    path = entity_config(tmp_path, 'hub_url = "nats-leaf://hub.example.net:7422"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert caught.value.key == "nats.hub_url"
    assert "nats.hub_insecure = true" in str(caught.value)
    # Loopback needs nothing; the explicit key, in the file or the environment, allows it.
    loopback = entity_config(tmp_path, 'hub_url = "nats-leaf://127.0.0.1:7422"\n')
    assert config_mod.load(loopback, environ={}).nats.hub_url == "nats-leaf://127.0.0.1:7422"
    cfg = config_mod.load(path, environ={"ENTITYD_NATS_HUB_INSECURE": "true"})
    assert cfg.nats.hub_insecure is True
    insecure = entity_config(
        tmp_path, 'hub_url = "nats-leaf://hub.example.net:7422"\nhub_insecure = true\n'
    )
    assert config_mod.load(insecure, environ={}).nats.hub_insecure is True


def test_config_pins_the_hub_ca_file_resolved_and_checked(tmp_path: Path) -> None:
    url = 'hub_url = "tls://hub.example.net:7422"\n'
    missing = entity_config(tmp_path, url + 'hub_ca_file = "hub-ca.pem"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(missing, environ={})
    assert caught.value.key == "nats.hub_ca_file" and "hub-ca.pem" in caught.value.problem
    (tmp_path / "hub-ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"nats\.hub_ca_file.*no PEM certificate"):
        config_mod.load(missing, environ={})
    (tmp_path / "hub-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n...\n")
    # Relative to the config file's directory, not to wherever the daemon was started.
    cfg = config_mod.load(missing, environ={})
    assert cfg.nats.hub_ca_file == str(tmp_path / "hub-ca.pem")
    # A CA file makes a nats-leaf:// URL a TLS link (a `tls { ca_file }` in the remote).
    leaf = entity_config(
        tmp_path, 'hub_url = "nats-leaf://10.0.0.5:7422"\nhub_ca_file = "hub-ca.pem"\n'
    )
    assert config_mod.load(leaf, environ={}).nats.hub_insecure is False


def test_the_starter_config_spells_out_hub_insecure_false(tmp_path: Path) -> None:
    text = config_mod.STARTER.format(name=A, data_dir=tmp_path, port=4222)
    assert "\nhub_insecure = false" in text
    assert config_mod.NatsSection().hub_insecure is False


def test_entityd_run_refuses_a_plain_remote_hub_before_starting_anything(
    tmp_path: Path,
) -> None:
    config = make_entity(tmp_path, A)
    edit(config, 'hub_url = ""', 'hub_url = "nats-leaf://hub.example.net:7422"')
    run = subprocess.run(
        [str(BIN / "entityd"), "run", "--config", str(config)], capture_output=True, text=True,
        timeout=60, env=child_env(),
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "config nats.hub_url" in run.stderr and "nats.hub_insecure" in run.stderr
    assert not (config.parent / "nats").exists()  # no server was started, no leaf.conf written


def test_the_daemons_leaf_config_pins_the_ca_or_says_in_clear(tmp_path: Path) -> None:
    """What `entityd run` writes to DATA_DIR/nats/leaf.conf, from a loaded config."""
    config = make_entity(tmp_path, A)
    federation.make_entity_credentials(A, config.parent)
    starter = config.read_text()
    (config.parent / "hub-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n...\n")
    config.write_text(edited(edited(starter, 'hub_url = ""',
                                    'hub_url = "tls://hub.example.net:7422"'),
                             'hub_ca_file = ""', 'hub_ca_file = "hub-ca.pem"'))
    path, env = leaf_server_config(config_mod.load(config, environ={}))
    assert f'tls {{ ca_file: "{config.parent / "hub-ca.pem"}" }}' in Path(path).read_text()

    config.write_text(edited(edited(starter, 'hub_url = ""',
                                    'hub_url = "nats-leaf://192.0.2.1:7422"'),
                             "hub_insecure = false", "hub_insecure = true"))
    with structlog.testing.capture_logs() as logged:
        path, env = leaf_server_config(config_mod.load(config, environ={}))
    assert "IN CLEAR, by nats.hub_insecure" in Path(path).read_text()
    assert [e["event"] for e in logged if e["log_level"] == "warning"] == ["hub_link_in_clear"]
    checked = nats_check(Path(path), **env)
    assert checked.returncode == 0, checked.stderr


# -- the hub's side -------------------------------------------------------------------------

USER = federation.public_key(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


def test_a_hub_beyond_loopback_without_tls_is_refused_unless_insecure_plain(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        federation.render_hub_conf([(A, USER)], store_dir=tmp_path)  # leafnodes on 0.0.0.0
    assert caught.value.key == "--leaf-host"
    for fix in ("--tls-dir", "--tls-cert", "--leaf-host 127.0.0.1", "--insecure-plain"):
        assert fix in caught.value.problem
    with pytest.raises(ConfigError) as caught:
        federation.render_hub_conf([(A, USER)], store_dir=tmp_path, host="0.0.0.0",
                                   leaf_host="127.0.0.1")
    assert caught.value.key == "--host"
    plain = federation.render_hub_conf([(A, USER)], store_dir=tmp_path, insecure_plain=True)
    assert "IN CLEAR, by --insecure-plain" in plain and "cert_file:" not in plain
    with pytest.raises(ConfigError, match="contradicts"):
        federation.render_hub_conf([(A, USER)], store_dir=tmp_path, tls_cert="c", tls_key="k",
                                   insecure_plain=True)
    # Loopback needs neither, as the tests' hubs show.
    local = federation.render_hub_conf([(A, USER)], store_dir=tmp_path, leaf_host="127.0.0.1")
    assert "cert_file:" not in local and "IN CLEAR" not in local


def test_a_hub_with_tls_covers_a_client_port_beyond_loopback_too(tmp_path: Path) -> None:
    text = federation.render_hub_conf(
        [(A, USER)], store_dir=tmp_path, host="0.0.0.0", tls_cert="/h.crt", tls_key="/h.key"
    )
    top, leafnodes = text.split("leafnodes {", 1)
    assert 'cert_file: "/h.crt"' in top and 'cert_file: "/h.crt"' in leafnodes
    assert 'min_version: "1.3"' in leafnodes and "verify" not in text
    local = federation.render_hub_conf(
        [(A, USER)], store_dir=tmp_path, tls_cert="/h.crt", tls_key="/h.key"
    )
    assert "cert_file:" not in local.split("leafnodes {", 1)[0]


@needs_openssl
def test_make_hub_tls_makes_a_private_ca_and_keeps_or_renews_the_certificate(
    tmp_path: Path,
) -> None:
    tls_dir = tmp_path / "tls"
    made = hublink.make_hub_tls(tls_dir, ["hub.example.net", "10.0.0.5", "::1"])
    assert made.issued
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tls_dir.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "hub.crt": 0o644, "hub.key": 0o600}
    assert hublink._sans("openssl", made.cert) == {"DNS:hub.example.net", "IP:10.0.0.5",
                                                   "IP:::1"}
    verify = ["openssl", "verify", "-CAfile", str(made.ca), str(made.cert)]
    assert subprocess.run(verify, capture_output=True, timeout=30).returncode == 0
    ca, cert = made.ca.read_bytes(), made.cert.read_bytes()

    # Asked again for names it covers: kept as is.
    again = hublink.make_hub_tls(tls_dir, ["10.0.0.5"])
    assert not again.issued and made.cert.read_bytes() == cert
    # A new name: a new certificate from the same CA, so leaves pinning ca.crt keep working.
    renewed = hublink.make_hub_tls(tls_dir, ["hub.example.net", "hub2.example.net"])
    assert renewed.issued and made.cert.read_bytes() != cert and made.ca.read_bytes() == ca
    assert subprocess.run(verify, capture_output=True, timeout=30).returncode == 0
    # The CA key moved offline: fine until a certificate must be issued.
    (tls_dir / "ca.key").rename(tmp_path / "ca.key.offline")
    assert not hublink.make_hub_tls(tls_dir, ["hub2.example.net"]).issued
    with pytest.raises(ConfigError, match=r"ca\.key back"):
        hublink.make_hub_tls(tls_dir, ["hub3.example.net"])
    assert not list(tls_dir.glob(".staging-*"))


@needs_openssl
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group needs root")
def test_a_renewed_hub_key_keeps_the_group_that_lets_the_hub_read_it(tmp_path: Path) -> None:
    """deploy/entityd-hub.service runs the hub as its own user, which reads hub.key through
    its group; a renewal must not take that away (or give it to anyone else)."""
    tls_dir = tmp_path / "etc-entityd-hub"
    tls_dir.mkdir(mode=0o755)
    made = hublink.make_hub_tls(tls_dir, ["hub.example.net"])
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o755  # an existing directory keeps its mode
    os.chown(made.key, -1, 65534)
    made.key.chmod(0o640)
    assert hublink.make_hub_tls(tls_dir, ["hub2.example.net"]).issued
    key = made.key.stat()
    assert (key.st_gid, stat.S_IMODE(key.st_mode)) == (65534, 0o640)
    ca_key = (tls_dir / "ca.key").stat()
    assert (ca_key.st_gid, stat.S_IMODE(ca_key.st_mode)) == (os.getegid(), 0o600)


@pytest.mark.parametrize(
    "name", ["hub,IP:1.2.3.4", "hub\nbasicConstraints=CA:TRUE", "hub example", "-hub", ""]
)
def test_a_certificate_name_is_a_dns_name_or_an_ip_and_nothing_else(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match="--tls-name"):
        hublink.make_hub_tls(tmp_path / "tls", [name])
    assert not (tmp_path / "tls").exists()


@needs_openssl
def test_hub_conf_cli_makes_the_certificate_or_needs_an_explicit_opt_out(
    tmp_path: Path,
) -> None:
    entity = ("--entity", f"{A}={USER}", "--store-dir", str(tmp_path / "store"))
    refused = federation_cli("hub-conf", *entity)
    assert refused.returncode == 2
    assert "--tls-dir" in refused.stderr and "--insecure-plain" in refused.stderr
    nameless = federation_cli("hub-conf", *entity, "--tls-dir", str(tmp_path / "tls"))
    assert nameless.returncode == 2 and "--tls-name" in nameless.stderr

    made = federation_cli("hub-conf", *entity, "--tls-dir", str(tmp_path / "tls"),
                          "--tls-name", "hub.example.net")
    assert made.returncode == 0, made.stderr
    assert f"copy {tmp_path / 'tls' / 'ca.crt'}" in made.stderr and "hub_ca_file" in made.stderr
    leafnodes = made.stdout.split("leafnodes {", 1)[1]
    assert f'cert_file: "{tmp_path / "tls" / "hub.crt"}"' in leafnodes
    (tmp_path / "hub.conf").write_text(made.stdout)
    checked = nats_check(tmp_path / "hub.conf")
    assert checked.returncode == 0, checked.stderr

    plain = federation_cli("hub-conf", *entity, "--insecure-plain")
    assert plain.returncode == 0 and "warning" in plain.stderr
    assert "IN CLEAR, by --insecure-plain" in plain.stdout


def test_leaf_conf_cli_refuses_a_plain_remote_hub_unless_told(tmp_path: Path) -> None:
    federation.make_entity_credentials(A, tmp_path / A)
    args = ("leaf-conf", A, "--data-dir", str(tmp_path / A),
            "--hub-url", "nats-leaf://hub.example.net:7422")
    refused = federation_cli(*args)
    assert refused.returncode == 2 and "--hub-insecure" in refused.stderr
    allowed = federation_cli(*args, "--hub-insecure")
    assert allowed.returncode == 0, allowed.stderr
    assert "hub_link_in_clear" in allowed.stderr  # the warning, on stderr only
    (tmp_path / "leaf.conf").write_text(allowed.stdout)
    seed = (tmp_path / A / "keys" / "hub.nk").read_text().strip()
    checked = nats_check(tmp_path / "leaf.conf", **{federation.SEED_ENV: seed})
    assert checked.returncode == 0, checked.stderr


# -- real servers: a TLS hub on loopback and leaves that do or do not belong ---------------


@dataclass
class Hub:
    root: Path
    server: ServerProcess
    leaf_port: int
    monitor_port: int
    ca: Path
    creds: dict[str, tuple[str, Path]]
    leaves: list[ServerProcess] = field(default_factory=list)

    def leafz(self) -> set[str]:
        """The server names of the leaves logged in now."""
        url = f"http://127.0.0.1:{self.monitor_port}/leafz"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return {leaf["name"] for leaf in json.load(answer).get("leafs", [])}

    def start_leaf(self, name: str, hub_url: str, *, hub_ca_file: str = "",
                   env: dict[str, str] | None = None,
                   edit: Callable[[str], str] = str) -> ServerProcess:
        """Entity `name`'s leaf, rendered by render_leaf_conf (then `edit`ed), on entityd's
        command line."""
        _, seed = self.creds[name]
        data_dir = self.root / f"{name}-{len(self.leaves)}"
        leaf = leaf_server(name, data_dir, hub_url, seed, hub_ca_file=hub_ca_file, env=env,
                           rewrite=edit)
        self.leaves.append(leaf)
        return leaf.start()

    def stop(self) -> None:
        for server in [*self.leaves, self.server]:
            server.stop()


def start_hub(root: Path, *, tls: bool) -> Hub:
    """A hub for A and B on loopback, its config from `hub-conf` (with --tls-dir when tls)."""
    creds = {name: federation.make_entity_credentials(name, root / name) for name in (A, B)}
    port, leaf_port, monitor_port = free_port(), free_port(), free_port()
    args = ["hub-conf", "--store-dir", str(root / "hub" / "jetstream"), "--port", str(port),
            "--leaf-host", "127.0.0.1", "--leaf-port", str(leaf_port)]
    for name, (public, _) in creds.items():
        args += ["--entity", f"{name}={public}"]
    if tls:
        args += ["--tls-dir", str(root / "hub" / "tls"), "--tls-name", "127.0.0.1"]
    made = federation_cli(*args)
    assert made.returncode == 0, made.stderr
    conf = root / "hub" / "hub.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(made.stdout + f'http: "127.0.0.1:{monitor_port}"\n')
    log = root / "hub" / "nats-server.log"
    server = ServerProcess([NATS_SERVER, "-c", str(conf), "-l", str(log)], port, log,
                           child_env()).start()
    return Hub(root, server, leaf_port, monitor_port, root / "hub" / "tls" / "ca.crt", creds)


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[Hub]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the hub's CA and certificate")
    hub = start_hub(tmp_path, tls=True)
    try:
        yield hub
    finally:
        hub.stop()


def leaf_logged(leaf: ServerProcess, needle: str) -> Callable[[], bool]:
    return lambda: needle in leaf.log.read_text(errors="replace")


async def test_a_leaf_pinning_the_hubs_ca_joins_over_tls(tls_hub: Hub) -> None:
    url = f"tls://127.0.0.1:{tls_hub.leaf_port}"
    leaf_a = await asyncio.to_thread(tls_hub.start_leaf, A, url, hub_ca_file=str(tls_hub.ca))
    leaf_b = await asyncio.to_thread(tls_hub.start_leaf, B, url, hub_ca_file=str(tls_hub.ca))
    await asyncio.to_thread(
        wait_until, lambda: tls_hub.leafz() == {f"entityd-{A}", f"entityd-{B}"}, "both leaves"
    )
    # And the federation works across it: a request from A answered by B through the hub.
    a = await nats.connect(leaf_a.url, inbox_prefix=f"_i.{A}")
    b = await nats.connect(leaf_b.url, inbox_prefix=f"_i.{B}")
    try:
        async def pong(msg: Msg) -> None:
            await msg.respond(b"pong")

        await b.subscribe(f"fed.req.{B}.>", cb=pong)
        await b.flush()
        async with asyncio.timeout(15):
            while True:
                try:
                    reply = await a.request(f"fed.req.{B}.{A}.ping", b"", timeout=0.5)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)
        assert reply.data == b"pong"
    finally:
        await a.close()
        await b.close()


def test_the_hub_refuses_a_plain_connection_on_its_leafnode_port(tls_hub: Hub) -> None:
    with socket.create_connection(("127.0.0.1", tls_hub.leaf_port), timeout=5) as s:
        info = json.loads(s.recv(65536).decode().removeprefix("INFO "))
        assert info["tls_required"] is True
        # A leaf that speaks plain NATS after the INFO: the hub hangs up, it never answers.
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    hub_log = tls_hub.server.log
    wait_until(lambda: "TLS Handshake Failure" in hub_log.read_text(), "the hub's refusal")
    assert tls_hub.leafz() == set()


def test_a_leaf_with_the_wrong_ca_or_none_is_refused(tls_hub: Hub, tmp_path: Path) -> None:
    other = hublink.make_hub_tls(tmp_path / "other-ca", ["127.0.0.1"])
    url = f"tls://127.0.0.1:{tls_hub.leaf_port}"
    wrong = tls_hub.start_leaf(A, url, hub_ca_file=str(other.ca))
    # No CA: the system's roots, which do not hold the hub's private CA.
    public_roots = tls_hub.start_leaf(B, url, env={"SSL_CERT_FILE": str(other.ca)})
    # The right CA, but a name the certificate was not made for (only 127.0.0.1).
    misnamed = tls_hub.start_leaf(B, f"tls://localhost:{tls_hub.leaf_port}",
                                  hub_ca_file=str(tls_hub.ca))
    for leaf in (wrong, public_roots):
        wait_until(leaf_logged(leaf, "certificate signed by unknown authority"), "refusal")
    wait_until(leaf_logged(misnamed, "wanted to match localhost"), "the name refused")
    assert tls_hub.leafz() == set()
    # The same leaf with the hub's CA gets in: the refusal was the CA, not anything else.
    tls_hub.start_leaf(A, url, hub_ca_file=str(tls_hub.ca))
    wait_until(lambda: tls_hub.leafz() == {f"entityd-{A}"}, "the leaf with the right CA")


def test_a_leaf_never_falls_back_to_plain_tcp(tmp_path: Path) -> None:
    """A hub (or anyone in its place) that offers no TLS: a TLS leaf does not log in."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the CA the leaf pins")
    ca = hublink.make_hub_tls(tmp_path / "tls", ["127.0.0.1"]).ca
    hub = start_hub(tmp_path, tls=False)
    try:
        url = f"tls://127.0.0.1:{hub.leaf_port}"
        pinned = hub.start_leaf(A, url, hub_ca_file=str(ca))
        bare = hub.start_leaf(B, url)  # tls:// alone: the rendered `tls {}` makes it insist
        for leaf in (pinned, bare):
            wait_until(leaf_logged(leaf, "TLS Handshake Failure"), "the leaf's refusal")
        assert hub.leafz() == set()
        # Without the rendered `tls {}` line the same tls:// URL logs in, in clear: the
        # scheme alone does not make nats-server insist on TLS, the block does.
        def unblocked(text: str) -> str:
            kept = [line for line in text.splitlines(True) if "tls {}" not in line]
            assert len(kept) == len(text.splitlines()) - 1
            return "".join(kept)

        hub.start_leaf(B, url, edit=unblocked)
        wait_until(lambda: hub.leafz() == {f"entityd-{B}"}, "the leaf without a tls block")
    finally:
        hub.stop()


def test_the_deploy_examples_pin_and_require_tls() -> None:
    hub = (REPO / "deploy" / "hub.conf").read_text()
    leaf = (REPO / "deploy" / "leaf.conf.example").read_text()
    leafnodes = hub.split("\nleafnodes {", 1)[1]
    assert 'cert_file: "/etc/entityd-hub/tls/hub.crt"' in leafnodes
    assert 'tls { ca_file: "/etc/entityd/hub-ca.pem" }' in leaf
    guide = (REPO / "deploy" / "FEDERATION.md").read_text()
    for needed in ("--tls-dir", "--tls-name", "--insecure-plain", "hub_ca_file", "hub_insecure"):
        assert needed in guide, needed
