"""The link between an entity's leaf and the federation hub: which hub URLs may be dialled
in clear (only loopback, or with `nats.hub_insecure`), and the hub's private CA and TLS
certificate, made with the `openssl` command.

A leaf's remote insists on TLS only when its config carries a `tls {}` block: nats-server
2.15 dialled a `tls://` URL in clear when the far end offered no TLS (measured), so every
TLS link is rendered with that block, and a hub URL is checked here before it is rendered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "CA_CERT",
    "HubLink",
    "HubTls",
    "hub_link",
    "hub_urls",
    "is_loopback",
    "make_hub_tls",
]

LEAF_URL_SCHEMES = ("nats-leaf://", "nats://", "tls://", "ws://", "wss://")
TLS_SCHEMES = ("tls", "wss")

# The files `make_hub_tls` keeps in its directory. Leaves pin CA_CERT; CA_KEY is needed
# only to issue the next hub certificate and may be moved offline meanwhile.
CA_CERT, CA_KEY = "ca.crt", "ca.key"
HUB_CERT, HUB_KEY = "hub.crt", "hub.key"
CA_DAYS = 3650
HUB_DAYS = 825
RENEW_BEFORE_S = 30 * 86400  # a hub certificate this close to expiry is issued anew
_DNS_NAME_RE = re.compile(
    r"\A(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
_INSECURE_FIX = (
    "use tls://HOST:PORT with nats.hub_ca_file = the hub's CA certificate (the ca.crt "
    "that `entityd federation hub-conf --tls-dir` wrote; leaf-conf: --hub-ca-file), or set "
    "nats.hub_insecure = true (leaf-conf: --hub-insecure) to accept plain TCP on a network "
    "you trust"
)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: 127.0.0.0/8, ::1 or localhost.

    Everything else is beyond loopback, including the wildcards 0.0.0.0, :: and "".
    """
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# -- the leaf's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class HubLink:
    """How a leaf dials the hub: its URLs, whether it insists on TLS, and which URLs
    beyond loopback it dials in clear (only ever with `hub_insecure`)."""

    urls: tuple[str, ...]
    tls: bool
    in_clear: tuple[str, ...] = ()


def hub_urls(hub_url: str | Sequence[str]) -> list[str]:
    """The hub's leafnode URLs: one, several separated by commas, or a list."""
    raw = hub_url.split(",") if isinstance(hub_url, str) else list(hub_url)
    urls = [url.strip() for url in raw if url.strip()]
    if not urls:
        raise ConfigError("nats.hub_url", "is empty; give the hub's leafnode URL")
    for url in urls:
        if not url.startswith(LEAF_URL_SCHEMES):
            raise ConfigError(
                "nats.hub_url", f"{url!r} is not a nats-leaf://, tls:// or ws(s):// URL"
            )
        if "@" in url:
            raise ConfigError(
                "nats.hub_url", f"{url!r} carries credentials; the leaf logs in with its nkey"
            )
        if any(c in url for c in "\"'\n\\ "):
            raise ConfigError("nats.hub_url", f"{url!r} has characters a URL cannot have")
        _host(url)
    return urls


def hub_link(
    hub_url: str | Sequence[str], *, hub_ca_file: str = "", hub_insecure: bool = False
) -> HubLink:
    """Check a leaf's hub URLs against the rule: TLS to any hub beyond loopback.

    The link is TLS when a URL says tls:// or wss://, or when a CA file is given (the leaf's
    remote then carries `tls { ca_file }`, whatever the scheme). A plain link to a host
    beyond loopback is refused unless `hub_insecure`; then it is returned in `in_clear`
    for the caller to warn about.
    """
    urls = hub_urls(hub_url)
    schemes = {urlsplit(url).scheme.lower() in TLS_SCHEMES for url in urls}
    if len(schemes) > 1:
        raise ConfigError(
            "nats.hub_url",
            f"mixes TLS and plain URLs ({', '.join(urls)}); the leaf dials all of them "
            "the same way: give every hub URL as tls://",
        )
    tls = schemes == {True} or bool(hub_ca_file)
    if tls:
        return HubLink(tuple(urls), tls=True)
    beyond = tuple(url for url in urls if not is_loopback(_host(url)))
    if beyond and not hub_insecure:
        raise ConfigError(
            "nats.hub_url",
            f"{beyond[0]!r} would carry the federation's traffic in clear to a host beyond "
            f"loopback: {_INSECURE_FIX}",
        )
    return HubLink(tuple(urls), tls=False, in_clear=beyond)


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ConfigError("nats.hub_url", f"{url!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ConfigError("nats.hub_url", f"{url!r} names no host")
    return parts.hostname


# -- the hub's side: a private CA and a server certificate ---------------------------------


@dataclass(frozen=True)
class HubTls:
    """The hub's TLS files: its certificate and key, and the CA that leaves pin."""

    cert: Path
    key: Path
    ca: Path
    issued: bool  # True when this call made a new hub certificate


def make_hub_tls(directory: Path, names: Sequence[str], *, openssl: str = "") -> HubTls:
    """A private CA and a hub certificate for `names` (DNS names or IP addresses) in
    `directory`, made with the openssl command; kept when they already cover the names.

    The CA is made once (ca.crt, ca.key); the hub certificate (hub.crt, hub.key) is
    issued again, by the same CA, when it does not cover every name asked for, was not
    signed by ca.crt, or expires within 30 days, so leaves that pin ca.crt keep working.
    Keys are 0600 (a new directory 0700); a renewed hub.key keeps the group and group
    read bit the operator gave the old one, so a hub running as its own user can read it.
    """
    directory = directory.expanduser().resolve()
    wanted = list(dict.fromkeys(_san(name) for name in names))
    tool = openssl or shutil.which("openssl")
    if not tool:
        raise ConfigError(
            "--tls-dir", "making a certificate needs the openssl command (apt-get install "
            "openssl); or give --tls-cert and --tls-key made elsewhere"
        )
    # New: private. An existing one keeps its mode: it may be /etc/entityd-hub, which the
    # hub's own user must traverse to read hub.conf.
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca, ca_key = directory / CA_CERT, directory / CA_KEY
    cert, key = directory / HUB_CERT, directory / HUB_KEY
    result = HubTls(cert=cert, key=key, ca=ca, issued=False)
    if not ca.exists():
        if ca_key.exists():
            raise ConfigError("--tls-dir", f"{ca_key} exists without {ca}: put it back, or "
                              f"remove {ca_key} to start a new CA (then every leaf needs it)")
        if not wanted:
            raise ConfigError("--tls-name", "give the hub's DNS name or IP address that "
                              "leaves dial (repeat for each)")
        _new_ca(tool, directory, wanted[0])
    elif cert.exists() and key.exists() and _still_good(tool, cert, ca, wanted):
        return result
    if not wanted:
        raise ConfigError("--tls-name", f"{cert} must be issued anew: give every DNS name "
                          "or IP address leaves dial (repeat for each)")
    if not ca_key.exists():
        raise ConfigError("--tls-dir", f"{cert} must be issued anew, which needs the CA's "
                          f"key: put {ca_key} back (it was moved offline?)")
    _new_hub_cert(tool, directory, wanted)
    return HubTls(cert=cert, key=key, ca=ca, issued=True)


def _san(name: str) -> str:
    """`name` as a subjectAltName entry, refusing anything that is neither an IP nor a
    DNS name (it goes into an openssl extension file)."""
    try:
        return f"IP:{ipaddress.ip_address(name.strip('[]'))}"
    except ValueError:
        pass
    if not _DNS_NAME_RE.match(name):
        raise ConfigError("--tls-name", f"{name!r} is neither a DNS name nor an IP address")
    return f"DNS:{name.rstrip('.').lower()}"


def _still_good(tool: str, cert: Path, ca: Path, wanted: list[str]) -> bool:
    signed = _run(tool, "verify", "-CAfile", str(ca), str(cert), check=False)
    lasting = _run(tool, "x509", "-noout", "-checkend", str(RENEW_BEFORE_S), "-in", str(cert),
                   check=False)
    if signed.returncode or lasting.returncode:
        return False
    return set(wanted) <= _sans(tool, cert)


def _sans(tool: str, cert: Path) -> set[str]:
    text = _run(tool, "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)).stdout
    lines = text.splitlines()[1:]  # after the "X509v3 Subject Alternative Name:" header
    found = set()
    for entry in ",".join(lines).split(","):
        kind, _, value = entry.strip().partition(":")
        if kind == "DNS":
            found.add(f"DNS:{value.lower()}")
        elif kind == "IP Address":
            found.add(f"IP:{ipaddress.ip_address(value)}")
    return found


def _new_ca(tool: str, directory: Path, first_name: str) -> None:
    subject = f"/CN=entityd federation CA for {first_name.partition(':')[2]}"
    with _staging(directory) as stage:
        _run(tool, "req", "-x509", "-new", *_EC_KEY, "-nodes", "-days", str(CA_DAYS),
             "-subj", subject, "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(stage / CA_KEY), "-out", str(stage / CA_CERT))
        _place(stage, directory, CA_KEY, CA_CERT)


def _new_hub_cert(tool: str, directory: Path, wanted: list[str]) -> None:
    with _staging(directory) as stage:
        (stage / "ext.cnf").write_text(
            f"subjectAltName={','.join(wanted)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _run(tool, "req", "-new", *_EC_KEY, "-nodes", "-subj", "/CN=entityd federation hub",
             "-keyout", str(stage / HUB_KEY), "-out", str(stage / "hub.csr"))
        serial = "0x" + (bytes([os.urandom(1)[0] & 0x7F]) + os.urandom(15)).hex()
        _run(tool, "x509", "-req", "-in", str(stage / "hub.csr"),
             "-CA", str(directory / CA_CERT), "-CAkey", str(directory / CA_KEY),
             "-set_serial", serial, "-days", str(HUB_DAYS), "-extfile", str(stage / "ext.cnf"),
             "-out", str(stage / HUB_CERT))
        _place(stage, directory, HUB_KEY, HUB_CERT)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@contextlib.contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A private directory beside the target, so no reader ever sees half a key pair."""
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(stage: Path, directory: Path, key: str, cert: str) -> None:
    for name, mode in ((key, 0o600), (cert, 0o644)):
        new, old = stage / name, directory / name
        os.chmod(new, mode)
        try:
            kept = old.stat()
            os.chown(new, -1, kept.st_gid)
        except (FileNotFoundError, PermissionError):
            continue
        os.chmod(new, mode | (kept.st_mode & 0o040))  # group read, never others
    os.replace(stage / key, directory / key)
    os.replace(stage / cert, directory / cert)


def _run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    if check and done.returncode:
        problem = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit {done.returncode}"
        raise ConfigError("--tls-dir", f"openssl {args[0]} failed: {problem}")
    return done
