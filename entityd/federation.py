"""Federation topology: an entity's hub credentials, the hub's user entry for it, and the
hub and leaf nats-server configurations that join entities into one federation.

Each entity host's nats-server is a leaf node with its own JetStream domain; it logs in to
the hub as an nkey user whose permissions let it speak only as itself (DESIGN.md,
"Subjects"). A hub reachable beyond loopback speaks only TLS on its leafnode port, and a leaf
dials a hub beyond loopback only over TLS, unless told otherwise (entityd.hublink). Run
`python -m entityd.federation --help` for the commands; deploy/FEDERATION.md says what goes
where.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys

from protocol import subjects

from . import hublink, identity, logs
from .errors import ConfigError, EntitydError, IdentityError
from .identity import KEY_DIR

__all__ = [
    "BOOKS_ACCOUNT",
    "HUB_ACCOUNT",
    "HUB_DOMAIN",
    "LEAF_PORT",
    "READER",
    "READER_INBOX",
    "SEED_ENV",
    "TREASURER",
    "HubCluster",
    "Permissions",
    "check_public_key",
    "entity_permissions",
    "hub_user_entry",
    "leaf_env",
    "ledger_in_fed",
    "main",
    "make_entity_credentials",
    "parser",
    "public_key",
    "read_seed",
    "reader_credentials",
    "reader_permissions",
    "render_hub_conf",
    "render_leaf_conf",
    "seed_path",
    "treasurer_entry",
    "treasurer_permissions",
]

SEED_FILE = "hub.nk"
# The leaf's nats-server reads its seed from this variable (`nkey: $HUB_NKEY_SEED` in the
# rendered config): nats-server cannot read a bare seed from a file (a `credentials` file
# must hold a JWT), and a variable keeps the secret out of the config, which can then be
# printed, logged and diffed.
SEED_ENV = "HUB_NKEY_SEED"
HUB_ACCOUNT = "FED"
# The account of the hub's JetStream, where the LEDGER stream lives; members reach it only
# through FED's imports of two services: an append to `ledger.<self>` and a direct get
# (as `ledger_get`). A service's answer goes back to its asker, so a member naming
# another's chain as the reply subject of a request has nothing stored there (with the
# stream in FED, JetStream's answers to such requests were stored as messages of that
# chain: deploy/FEDERATION.md, "Replies aimed at another member's chain").
BOOKS_ACCOUNT = "BOOKS"
# Not a valid entity name (no '_' there), so no entity's default domain can take it.
HUB_DOMAIN = "fed_hub"
TREASURER = "treasury"  # the hub user of `entityd economy`; its reply inboxes: _i.treasury
READER = "books-reader"  # the hub users of entityd/books_reader.py (one in FED, one in BOOKS)
# The reader's own reply inboxes: not under `_i.`, where members may publish.
READER_INBOX = "_books_reader"
LEAF_PORT = 7422
CLUSTER_PORT = 6222
ROUTE_SCHEMES = ("nats-route://", "nats://")
MIN_CLUSTER = 3  # nodes: an R3 stream keeps its quorum with one of them lost
DOMAIN_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
_USER_KEY_RE = re.compile(r"\AU[A-Z2-7]{55}\Z")

# The limits of the shipped nats.conf, repeated because a nats-server config cannot extend
# another one's `jetstream` block (a second block replaces the first).
_LIMITS = """\
max_payload: 2MB
max_pending: 64MB
max_connections: 1024
write_deadline: "10s"
ping_interval: "20s"
"""
_JS_LIMITS = ("max_memory_store: 256MB", "max_file_store: 8GB")
# On the hub only: the subscriptions one connection may hold, a member's leaf included
# (all its servers' interest in federation subjects: a member's daemon, its entityctl
# and web clients need a few hundred). Without it one member opening subscriptions
# without end grows the hub's memory (about 1 KB each) and, through the interest the hub
# passes on, every other member's server. Not on a member's own server: its one
# connection to the hub carries every member's interest.
HUB_MAX_SUBSCRIPTIONS = 4096
_HUB_LIMITS = f"max_subscriptions: {HUB_MAX_SUBSCRIPTIONS}\n"

log = logs.get("entityd.federation")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    def __add__(self, other: Permissions) -> Permissions:
        return Permissions(self.publish + other.publish, self.subscribe + other.subscribe)


def entity_permissions(name: str, hub_domain: str = HUB_DOMAIN) -> Permissions:
    """What the hub lets entity `name`'s leaf send and receive: DESIGN.md's list, and the
    ledger's (DESIGN.md, "The economy"): append to its own chain `ledger.<self>` and read
    every chain by direct gets on the hub's LEDGER stream, nothing else of the hub's
    JetStream (no consumer, purge, delete or update).

    A durable command needs nothing more: its stream lives in the receiver's leaf, so the
    sender publishes on `fed.cmd.<dst>.<self>.<op>` and the PubAck comes back on `_i.<self>.`.
    An append's PubAck comes back the same way.
    """
    _check_name(name)
    _check_domain("hub domain", hub_domain)
    # Reads through the hub's books reader (its LEDGER in BOOKS), or (a hub made before
    # BOOKS, its LEDGER in FED: `render_hub_conf`) by direct gets on FED's own JetStream.
    return Permissions(
        publish=(f"fed.evt.{name}.>", f"fed.req.*.{name}.>", f"fed.cmd.*.{name}.>", "_i.*.>",
                 subjects.ledger(name), subjects.ledger_read(name),
                 f"$JS.{hub_domain}.API.DIRECT.GET.LEDGER"),
        subscribe=(
            "fed.evt.>",
            f"fed.req.{name}.>",
            f"fed.cmd.{name}.>",
            f"{subjects.inbox_prefix(name)}.>",
        ),
    )


# -- credentials ---------------------------------------------------------------------------


def seed_path(data_dir: Path) -> Path:
    return data_dir / KEY_DIR / SEED_FILE


def make_entity_credentials(name: str, data_dir: Path) -> tuple[str, Path]:
    """The entity's hub user key pair: (public nkey, seed path), creating the seed if missing.

    The seed lives in DATA_DIR/keys (0700) with mode 0600. It is a key of its own, not the
    entity's Ed25519 identity: the hub chooses the nonce a leaf signs to log in, so an
    identity key used there could be made to sign an envelope body.
    """
    _check_name(name)
    path = seed_path(data_dir)
    if path.exists():
        return public_key(read_seed(path)), path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    # Written whole under a private name, then linked into place: no reader ever sees a
    # half-written seed, and a seed that appeared meanwhile is never overwritten.
    partial = path.with_name(f".{SEED_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(seed + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(partial, path)
    except FileExistsError:  # another process made one in between: use theirs
        return public_key(read_seed(path)), path
    finally:
        partial.unlink(missing_ok=True)
    return public_key(seed), path


def read_seed(path: Path) -> str:
    """A user nkey seed ("SU..."), refusing a file that group or others can read."""
    text = identity.read_private(
        path, "make the hub credentials with `entityd federation hub-user NAME --data-dir DIR`"
    )
    try:
        prefix, _ = nkeys.decode_seed(text.encode())
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError):
        prefix = None
    if prefix != nkeys.PREFIX_BYTE_USER:
        raise IdentityError(f"{path} does not hold a NATS user nkey seed (SU...); restore it "
                            "from a backup, or make a new hub login with `entityd "
                            "federation hub-user NAME --data-dir DIR` and add its entry to "
                            "the hub")
    return text


def public_key(seed: str) -> str:
    """The public user nkey ("U...") of a seed."""
    return str(nkeys.from_seed(seed.encode()).public_key.decode())


def check_public_key(key: str) -> str:
    """`key` if it is a well-formed public user nkey (prefix and checksum), else ConfigError."""
    problem = f"{key!r} is not a public user nkey (U followed by 55 base32 characters)"
    if not _USER_KEY_RE.match(key):
        raise ConfigError("nkey", problem)
    raw = base64.b32decode(key + "=" * (-len(key) % 8))
    body, checksum = raw[:-2], raw[-2:]
    if body[0] != nkeys.PREFIX_BYTE_USER or nkeys.crc16_checksum(body) != checksum:
        raise ConfigError("nkey", problem + " (bad checksum)")
    return key


# -- the hub -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubCluster:
    """One node's place in a hub cluster (DESIGN.md: "a hub can be a 3-node NATS cluster
    for availability"): every node has the same users, account and JetStream domain, its
    own server name and store, and routes to the others; a LEDGER stream made with three
    replicas (`entityd economy init --replicas 3`) then keeps every entry it acknowledged
    through the loss of any one node.

    `routes` are the nodes' route URLs (nats-route://HOST:PORT), this node's own allowed
    (nats-server skips it), so every node can be given the same list. Routes beyond
    loopback need mutual TLS: `tls_cert` and `tls_key` (a certificate good for both
    serverAuth and clientAuth, naming the node's route address) and `tls_ca`, the CA
    every node's certificate must be signed by; a node without one cannot join.
    """

    name: str
    routes: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = CLUSTER_PORT
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""


def _cluster_block(cluster: HubCluster, server_name: str, insecure_plain: bool) -> str:
    """The `cluster` block of one node, after refusing what would not keep a quorum or
    would let anyone who reaches the route port join the hub (and read every account)."""
    _check_domain("--cluster", cluster.name)
    if server_name in ("", "entityd-hub"):
        raise ConfigError("--server-name", "each node of a hub cluster needs a name of its own "
                          "(e.g. hub-1, hub-2, hub-3: JetStream places replicas by it)")
    if server_name == cluster.name:
        raise ConfigError("--server-name", f"{server_name!r} is the cluster's name; give the "
                          "node one of its own")
    own = f"{cluster.host}:{cluster.port}"
    others = []
    for route in cluster.routes:
        if not route.startswith(ROUTE_SCHEMES):
            raise ConfigError("--route", f"{route!r} is not a nats-route://HOST:PORT URL")
        if "@" in route:
            raise ConfigError("--route", f"{route!r} carries credentials; the nodes prove "
                              "who they are with their certificates (tls_cert)")
        address = route.split("://", 1)[1].rstrip("/")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError("--route", f"{route!r} names no HOST:PORT")
        if address != own:
            others.append(address)
    if len(set(others)) + 1 < MIN_CLUSTER:
        raise ConfigError("--route", f"a hub cluster needs at least {MIN_CLUSTER} nodes (a "
                          "replicated stream keeps its quorum only with a majority left); "
                          f"give the routes of at least {MIN_CLUSTER - 1} other nodes")
    tls_files = (cluster.tls_cert, cluster.tls_key, cluster.tls_ca)
    if any(tls_files) and not all(tls_files):
        raise ConfigError("--cluster-tls-cert", "give the node's certificate, its key and the CA "
                          "that signed every node's certificate, or none of them")
    beyond = [where for where in (cluster.host, *(a.rpartition(":")[0] for a in others))
              if not hublink.is_loopback(where)]
    if cluster.tls_cert:
        # verify: a route is accepted only from a node with a certificate of that CA.
        tls = (
            "    tls {\n"
            f"        cert_file: {_quote(cluster.tls_cert)}\n"
            f"        key_file: {_quote(cluster.tls_key)}\n"
            f"        ca_file: {_quote(cluster.tls_ca)}\n"
            "        verify: true\n"
            '        min_version: "1.3"\n'
            "        timeout: 2\n"
            "    }\n"
        )
    elif beyond and not insecure_plain:
        raise ConfigError(
            "--cluster-host" if not hublink.is_loopback(cluster.host) else "--route",
            f"{beyond[0]} is beyond loopback: routes carry every account's traffic, and "
            "anyone who reaches an open route port joins the hub; give the nodes mutual "
            "TLS (--cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca), or keep the "
            "cluster on loopback, or --insecure-plain on a network you trust")
    elif beyond:
        tls = ("    # IN CLEAR, by --insecure-plain: any host that reaches this port can join\n"
               "    # the hub as a node and read every account's traffic.\n")
    else:
        tls = "    # No TLS: every node is on loopback.\n"
    return (
        "cluster {\n"
        f"    name: {_quote(cluster.name)}\n"
        f"    host: {_quote(cluster.host)}\n"
        f"    port: {cluster.port}\n"
        f"    routes = {_list(cluster.routes)}\n"
        + tls
        + "}\n\n"
    )


def treasurer_permissions() -> Permissions:
    """What the hub lets its treasurer do (`entityd economy`): make and read the LEDGER
    stream and append to any chain (a mint sits on the credited entity's chain), nothing
    else: no update, purge or delete of LEDGER, no other stream, no federation subject.
    No update because one could also give LEDGER a max_age or max_msgs that drops
    entries; an operator grants it for a moment to give an old LEDGER its size limit
    (deploy/FEDERATION.md, "The ledger's limits")."""
    api = "$JS.API"
    return Permissions(
        publish=(subjects.ledger("*"), f"{api}.STREAM.CREATE.LEDGER",
                 f"{api}.STREAM.INFO.LEDGER", f"{api}.DIRECT.GET.LEDGER"),
        subscribe=(f"{subjects.inbox_prefix(TREASURER)}.>",),
    )


def reader_permissions() -> tuple[Permissions, Permissions]:
    """What the hub lets its books reader (entityd/books_reader.py) do, in FED and in
    BOOKS: take the members' asks and answer into their inboxes; direct gets of LEDGER
    and their answers. Nothing else: no `ledger.*` (no answer of it lands on a chain),
    no federation subject, no other stream."""
    return (Permissions(publish=("_i.*.>",), subscribe=(subjects.ledger_read("*"),)),
            Permissions(publish=("$JS.API.DIRECT.GET.LEDGER",),
                        subscribe=(f"{READER_INBOX}.>",)))


def hub_user_entry(name: str, public_nkey: str, *, extra: Permissions | None = None,
                   hub_domain: str = HUB_DOMAIN) -> str:
    """The hub's user entry for an entity: a NATS config map for `accounts.FED.users`.

    `extra` adds subjects for an operator's deliberate grant (e.g. `$JS.<domain>.API.>`,
    see deploy/FEDERATION.md); an entity's own permissions never need it.
    """
    return _user_entry(name, public_nkey,
                       entity_permissions(name, hub_domain) + (extra or Permissions()))


def treasurer_entry(public_nkey: str) -> str:
    """The hub's user entry for its treasurer."""
    return _user_entry(TREASURER, public_nkey, treasurer_permissions())


def _user_entry(name: str, public_nkey: str, perms: Permissions) -> str:
    check_public_key(public_nkey)
    return (
        f"# {name}\n"
        "{\n"
        f"  nkey: {public_nkey}\n"
        "  permissions: {\n"
        f"    publish: {{ allow: {_list(perms.publish)} }}\n"
        f"    subscribe: {{ allow: {_list(perms.subscribe)} }}\n"
        "  }\n"
        "}\n"
    )


def render_hub_conf(
    entities: Sequence[tuple[str, str]],
    *,
    store_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 4222,
    leaf_host: str = "0.0.0.0",
    leaf_port: int = LEAF_PORT,
    domain: str = HUB_DOMAIN,
    server_name: str = "entityd-hub",
    tls_cert: str = "",
    tls_key: str = "",
    insecure_plain: bool = False,
    grants: Mapping[str, Permissions] | None = None,
    treasurer: str = "",
    reader: tuple[str, str] = ("", ""),
    cluster: HubCluster | None = None,
) -> str:
    """A complete hub configuration: one nkey user per (name, public nkey) in account FED.

    Leaf nodes log in on leaf_host:leaf_port. With tls_cert and tls_key (PEM files) that
    port speaks only TLS, and so does the client port if `host` is beyond loopback. A
    port bound beyond loopback without them is refused unless `insecure_plain`.
    With `cluster`, the configuration of one node of a hub cluster (see HubCluster):
    render one per node, each with its own `server_name` and `store_dir`, the rest alike.
    `reader` is the books reader's two public nkeys (its FED login's, its BOOKS login's:
    `reader-user` makes them): members read the ledger only through it.
    """
    names = [name for name, _ in entities]
    if len(set(names)) != len(names):
        raise ConfigError("entities", f"an entity is listed twice: {names}")
    keys = [key for _, key in entities]
    if len(set(keys)) != len(keys):
        raise ConfigError("entities", "two entities share one nkey; each needs its own")
    _check_domain("hub domain", domain)
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("tls", "give both a certificate and its key, or neither")
    if tls_cert and insecure_plain:
        raise ConfigError("--insecure-plain", "contradicts the TLS certificate given")
    exposed = [
        (flag, f"{bind}:{bound}")
        for flag, bind, bound in (("--leaf-host", leaf_host, leaf_port), ("--host", host, port))
        if not hublink.is_loopback(bind)
    ]
    if exposed and not tls_cert and not insecure_plain:
        flag, where = exposed[0]
        raise ConfigError(
            flag,
            f"{where} is reachable beyond loopback and would carry the federation in clear: "
            "give --tls-dir DIR --tls-name HUB_NAME (makes a private CA and a certificate), "
            f"or --tls-cert and --tls-key, or bind loopback ({flag} 127.0.0.1), or "
            "--insecure-plain on a network you trust",
        )
    cluster_conf = _cluster_block(cluster, server_name, insecure_plain) if cluster else ""
    grants = grants or {}
    unknown = set(grants) - set(names)
    if unknown:
        raise ConfigError("grants", f"no such entity: {sorted(unknown)}")
    for kept in (TREASURER, READER):
        if kept in names:
            raise ConfigError("entities", f"{kept!r} is a hub login's name, not an entity's")
    if any(reader) and not all(reader):
        raise ConfigError("--reader", "give the books reader's two nkeys (FED's and BOOKS')")
    users = "".join(
        _indent(hub_user_entry(name, key, extra=grants.get(name), hub_domain=domain), 6)
        for name, key in entities
    )
    keeper = _indent(treasurer_entry(treasurer), 6) if treasurer else ""
    books = not ledger_in_fed(store_dir)
    fed_reader = books_reader = ""
    if all(reader):  # (with LEDGER in FED, both its logins are FED's)
        fed_perms, books_perms = reader_permissions()
        fed_reader = _indent(_user_entry(READER, reader[0], fed_perms), 6)
        books_reader = _indent(_user_entry(READER, reader[1], books_perms), 6)
    client_tls = ""
    if not tls_cert and not hublink.is_loopback(host):
        client_tls = "# IN CLEAR, by --insecure-plain: this port is reachable beyond loopback.\n"
    if tls_cert:
        tls_block = (
            # verify stays off: leaves prove who they are with their nkey, not a certificate.
            "tls {\n"
            f"    cert_file: {_quote(tls_cert)}\n"
            f"    key_file: {_quote(tls_key)}\n"
            '    min_version: "1.3"\n'
            "    timeout: 2\n"
            "}\n"
        )
        tls = _indent(tls_block, 4)
        if not hublink.is_loopback(host):
            client_tls = tls_block
    elif not hublink.is_loopback(leaf_host):
        tls = (
            "    # IN CLEAR, by --insecure-plain: reachable beyond loopback without TLS, so\n"
            "    # anyone on the path reads and alters the federation's traffic. Only for a\n"
            "    # network you trust; leaves must set nats.hub_insecure = true to dial it.\n"
        )
    else:
        tls = (
            "    # No TLS: the port is on loopback. A hub bound beyond loopback needs\n"
            "    # tls { cert_file, key_file } here (hub-conf --tls-dir makes them).\n"
        )
    return (
        "# entityd federation hub, rendered by `python -m entityd.federation hub-conf`.\n"
        "# Entity leaf nodes log in on the leafnodes port, each as its own nkey user.\n"
        f"server_name: {_quote(server_name)}\n"
        f"host: {_quote(host)}\n"
        f"port: {port}\n"
        + client_tls
        + _LIMITS
        + _HUB_LIMITS
        + "\njetstream {\n"
        f"    store_dir: {_quote(str(store_dir))}\n"
        f"    domain: {_quote(domain)}\n"
        "}\n\n"
        + cluster_conf
        + "leafnodes {\n"
        f"    host: {_quote(leaf_host)}\n"
        f"    port: {leaf_port}\n"
        + tls
        + "}\n\n"
        + (_books_accounts(users + fed_reader, keeper + books_reader) if books
           else _fed_account(users + keeper + fed_reader + books_reader))
    )


def ledger_in_fed(store_dir: str | Path) -> bool:
    """Whether the hub's store holds a LEDGER stream in account FED: a hub made before
    the BOOKS account keeps it there (moving it would need every entry copied, and the
    readers' checkpoints made again), and so keeps the reply flood of
    deploy/FEDERATION.md open."""
    return (Path(store_dir) / "jetstream" / HUB_ACCOUNT / "streams" / "LEDGER").is_dir()


def _books_accounts(users: str, books_users: str) -> str:
    """FED for the members, BOOKS for the hub's JetStream and its LEDGER stream: members
    append through an import of `ledger.*` and read through the books reader, which logs
    in to both; the treasurer logs in to BOOKS."""
    return (
        "accounts {\n"
        f"  {HUB_ACCOUNT} {{\n"
        "    users = [\n"
        + users
        + "    ]\n"
        "    imports = [\n"
        f'      {{ service: {{ account: {BOOKS_ACCOUNT}, subject: "ledger.*" }} }}\n'
        "    ]\n"
        "  }\n"
        f"  {BOOKS_ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        "    users = [\n"
        + books_users
        + "    ]\n"
        "    exports = [\n"
        '      { service: "ledger.*" }\n'
        "    ]\n"
        "  }\n"
        "}\n"
    )


def _fed_account(users: str) -> str:
    """The layout of a hub whose LEDGER lives in FED (`ledger_in_fed`)."""
    return (
        "# LEDGER lives in account FED, where it was made: kept there (see\n"
        "# deploy/FEDERATION.md, \"Replies aimed at another member's chain\").\n"
        "accounts {\n"
        f"  {HUB_ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        "    users = [\n"
        + users
        + "    ]\n"
        "  }\n"
        "}\n"
    )


# -- an entity's leaf ----------------------------------------------------------------------


def render_leaf_conf(
    name: str,
    hub_url: str | Sequence[str],
    seed: Path,
    *,
    domain: str = "",
    host: str = "127.0.0.1",
    port: int = 4222,
    store_dir: str | Path = "",
    hub_ca_file: str = "",
) -> str:
    """The configuration of entity `name`'s own nats-server as a leaf of the hub.

    JetStream runs in the entity's own domain (default: its name). The config holds no
    secret: the server must be started with `leaf_env(seed)` in its environment.
    `hub_url` is one URL, several separated by commas, or a list (a hub cluster).
    host, port and store_dir are what entityd also passes on the command line (-a, -p,
    -sd), which win; they are here so the file also runs by hand.
    A TLS link (tls:// URLs, or a `hub_ca_file`, which the remote then pins) gets a tls
    block. The caller has checked the link against the rule (`hublink.hub_link`: config
    load does, for every daemon start, and so does `leaf-conf`); a plain link beyond
    loopback, which only `nats.hub_insecure` lets through, is marked in the file and
    logged as a warning.
    """
    _check_name(name)
    domain = domain or name
    _check_domain("nats.domain", domain)
    if domain == HUB_DOMAIN:
        raise ConfigError("nats.domain", f"{HUB_DOMAIN!r} is the hub's JetStream domain")
    link = hublink.hub_link(hub_url, hub_ca_file=hub_ca_file, hub_insecure=True)
    store = f"    store_dir: {_quote(str(store_dir))}\n" if store_dir else ""
    # Only a tls block makes the leaf insist on TLS: a bare tls:// URL went in clear to a
    # hub that offered no TLS (see entityd.hublink).
    if hub_ca_file:
        tls = f"            tls {{ ca_file: {_quote(hub_ca_file)} }}\n"
    elif link.tls:
        tls = "            tls {}  # the hub's certificate is checked against the system's CAs\n"
    elif link.in_clear:
        tls = "            # IN CLEAR, by nats.hub_insecure: no TLS to a hub beyond loopback.\n"
        log.warning("hub_link_in_clear", urls=list(link.in_clear), allowed_by="nats.hub_insecure")
    else:
        tls = ""
    return (
        f"# nats-server of entity {name}: a leaf of the federation hub, JetStream domain\n"
        f"# {domain!r}. Rendered by `python -m entityd.federation leaf-conf`; it logs in\n"
        f"# with the nkey seed in {_quote(str(seed))}, passed in ${SEED_ENV}.\n"
        f"server_name: {_quote('entityd-' + name)}\n"
        f"host: {_quote(host)}\n"
        f"port: {port}\n"
        + _LIMITS
        + "\njetstream {\n"
        + store
        + f"    domain: {_quote(domain)}\n"
        + "".join(f"    {line}\n" for line in _JS_LIMITS)
        + "}\n\n"
        "leafnodes {\n"
        "    remotes = [\n"
        "        {\n"
        f"            urls: {_list(link.urls)}\n"
        f"            nkey: ${SEED_ENV}\n"
        # Entity-local traffic (mailboxes, local replies, JetStream deliveries) stays on
        # the leaf: the hub would refuse loc.>, but _l.> replies must not reach it at all.
        '            deny_exports: ["loc.>", "_l.>"]\n'
        '            deny_imports: ["loc.>", "_l.>"]\n'
        + tls
        + "        }\n"
        "    ]\n"
        "}\n"
    )


def leaf_env(seed: Path) -> dict[str, str]:
    """What to add to the leaf nats-server's environment (and to nothing else's)."""
    return {SEED_ENV: read_seed(seed)}


# -- helpers -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not subjects.valid_name(name):
        raise ConfigError("entity.name", f"{name!r} must be 1-32 of [a-z0-9-]")


def _check_domain(key: str, domain: str) -> None:
    if not DOMAIN_RE.match(domain):
        raise ConfigError(key, f"{domain!r} must be 1-64 of letters, digits, '_' and '-'")


def _quote(value: str) -> str:
    if any(c in value for c in "\"\n\\"):
        raise ConfigError("path", f"{value!r} cannot be written into a nats-server config")
    return f'"{value}"'


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(item) for item in items) + "]"


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


# -- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entityd federation",
        description="Hub credentials and nats-server configs for an entityd federation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        """A subcommand whose --help opens with `summary` and ends with `example`."""
        return sub.add_parser(name, help=summary, description=summary,
                              epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    user = command("hub-user", "Make (or show) an entity's hub credentials and its hub user "
                   "entry.", "entityd federation hub-user entity-a --data-dir "
                   "~/entities/entity-a")
    user.add_argument("name", help="the entity's name, e.g. entity-a")
    user.add_argument("--data-dir", required=True, type=Path, help="the entity's data dir")

    hub = command("hub-conf", "Print a complete hub configuration.",
                  "entityd federation hub-conf --entity entity-a=UA... --store-dir "
                  "/var/lib/entityd-hub --tls-dir /etc/entityd-hub/tls --tls-name "
                  "hub.example.net > hub.conf")
    hub.add_argument(
        "--entity", action="append", default=[], metavar="NAME=NKEY",
        help="an entity and its public user nkey (from hub-user); repeat for each",
    )
    hub.add_argument("--store-dir", required=True, help="the hub's JetStream store")
    hub.add_argument("--treasurer", default="", metavar="NKEY",
                     help="admit the treasurer (`treasurer` makes its login), who makes the "
                     "LEDGER stream and mints with `entityd economy`")
    hub.add_argument("--reader", default="", metavar="FED_NKEY,BOOKS_NKEY",
                     help="admit the books reader (`reader-user` makes its logins), through "
                     "which members read the ledger")
    hub.add_argument("--host", default="127.0.0.1", help="client listen address")
    hub.add_argument("--port", type=int, default=4222, help="client port")
    hub.add_argument("--leaf-host", default="0.0.0.0", help="leafnode listen address")
    hub.add_argument("--leaf-port", type=int, default=LEAF_PORT)
    tls = hub.add_argument_group(
        "TLS", "required when the leafnode (or client) port is bound beyond loopback"
    )
    tls.add_argument(
        "--tls-dir", type=Path, default=None,
        help="make (or keep) a private CA and the hub's certificate here: ca.crt, which "
        "every leaf pins (nats.hub_ca_file), ca.key, hub.crt, hub.key",
    )
    tls.add_argument(
        "--tls-name", action="append", default=[], metavar="NAME",
        help="a DNS name or IP address leaves dial the hub by; repeat for each",
    )
    tls.add_argument("--tls-cert", default="", help="or: a PEM certificate made elsewhere")
    tls.add_argument("--tls-key", default="", help="its PEM key")
    tls.add_argument(
        "--insecure-plain", action="store_true",
        help="no TLS beyond loopback: anyone on the path reads and alters the traffic",
    )
    node = hub.add_argument_group(
        "cluster", "one node of a hub cluster of 3 or more: render a config for each node, "
        "with its own --server-name and --store-dir and the same users and --route list")
    node.add_argument("--cluster", default="", metavar="NAME",
                      help="the cluster's name, the same on every node")
    node.add_argument("--server-name", default="entityd-hub",
                      help="this node's name, its own in a cluster (e.g. hub-1)")
    node.add_argument("--cluster-host", default="127.0.0.1", help="route listen address")
    node.add_argument("--cluster-port", type=int, default=CLUSTER_PORT)
    node.add_argument("--route", action="append", default=[], metavar="URL",
                      help="nats-route://HOST:PORT of a node; repeat for each (this "
                      "node's own may be among them)")
    node.add_argument("--cluster-tls-cert", default="",
                      help="this node's certificate for the routes (serverAuth and "
                      "clientAuth); required beyond loopback")
    node.add_argument("--cluster-tls-key", default="", help="its PEM key")
    node.add_argument("--cluster-tls-ca", default="",
                      help="the CA every node's route certificate is signed by")

    treasurer = command("treasurer", "Make (or show) the treasurer's hub login, for "
                        "`entityd economy`.",
                        "entityd federation treasurer --data-dir /etc/entityd-hub/treasury")
    treasurer.add_argument("--data-dir", required=True, type=Path,
                           help="where its login is kept (0600)")

    reader = command("reader-user", "Make (or show) the books reader's two hub logins "
                     "(entityd/books_reader.py).",
                     "entityd federation reader-user --keys /etc/entityd-hub/books-reader")
    reader.add_argument("--keys", required=True, type=Path,
                        help="where its logins are kept (0600)")

    leaf = command("leaf-conf", "Print an entity's leaf nats-server configuration.",
                   "entityd federation leaf-conf entity-a --data-dir ~/entities/entity-a "
                   "--hub-url tls://hub.example.net:7422 --hub-ca-file ca.crt")
    leaf.add_argument("name")
    leaf.add_argument("--data-dir", required=True, type=Path)
    leaf.add_argument("--hub-url", required=True, help="e.g. tls://hub.example.net:7422")
    leaf.add_argument("--domain", default="", help="JetStream domain (default: the name)")
    leaf.add_argument("--port", type=int, default=4222, help="the entity's local NATS port")
    leaf.add_argument("--hub-ca-file", default="", help="CA that signed the hub's TLS cert")
    leaf.add_argument(
        "--hub-insecure", action="store_true",
        help="allow a plain nats-leaf:// hub beyond loopback (nats.hub_insecure)",
    )

    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(level="warning", fmt="console")  # to stderr: stdout carries the config
    try:
        if args.command == "hub-user":
            return _cmd_hub_user(args.name, args.data_dir)
        if args.command == "hub-conf":
            return _cmd_hub_conf(args)
        if args.command == "treasurer":
            return _cmd_treasurer(args.data_dir)
        if args.command == "reader-user":
            return _cmd_reader_user(args.keys)
        return _cmd_leaf_conf(args)
    except EntitydError as exc:
        print(f"entityd.federation: {exc}", file=sys.stderr)
        return 2


def _cmd_hub_user(name: str, data_dir: Path) -> int:
    data_dir = data_dir.expanduser().resolve()
    public, path = make_entity_credentials(name, data_dir)
    print(f"# {name}: hub credentials (seed, keep it 0600 on this host only): {path}")
    print(f"# public nkey: {public}")
    print(f"# On the hub, add this entry to accounts.{HUB_ACCOUNT}.users, then restart it")
    print(f"# (or render a whole hub.conf with `hub-conf --entity {name}={public} ...`):")
    print(hub_user_entry(name, public), end="")
    return 0


def _cmd_treasurer(data_dir: Path) -> int:
    data_dir = data_dir.expanduser().resolve()
    public, path = make_entity_credentials(TREASURER, data_dir)
    print(f"# the treasurer (`entityd economy` on the hub): its hub login, 0600: {path}")
    print(f"# public nkey: {public}")
    print(f"# Render the hub with `hub-conf --treasurer {public} ...`, or add this entry to")
    print(f"# accounts.{BOOKS_ACCOUNT}.users (accounts.{HUB_ACCOUNT}.users on a hub whose LEDGER "
          f"was made in {HUB_ACCOUNT}: see deploy/FEDERATION.md):")
    print(treasurer_entry(public), end="")
    return 0


def reader_credentials(keys: Path) -> tuple[str, str]:
    """The books reader's two logins (FED's, BOOKS'), made once in `keys`: their public
    nkeys."""
    return (make_entity_credentials(READER, keys / "fed")[0],
            make_entity_credentials(READER, keys / "books")[0])


def _cmd_reader_user(keys: Path) -> int:
    keys = keys.expanduser().resolve()
    fed, books = reader_credentials(keys)
    print(f"# the books reader (python -m entityd.books_reader --keys {keys} --member ...):")
    print(f"# its logins, 0600, under {keys}; render the hub with `hub-conf --reader "
          f"{fed},{books} ...`")
    print(f"{fed},{books}")
    return 0


def _cmd_hub_conf(args: argparse.Namespace) -> int:
    entities = []
    for item in args.entity:
        name, sep, key = item.partition("=")
        if not sep:
            raise ConfigError("--entity", f"{item!r} is not NAME=NKEY")
        _check_name(name)
        entities.append((name, check_public_key(key)))
    if not entities:
        raise ConfigError("--entity", "give at least one NAME=NKEY (from hub-user)")
    cert, key = args.tls_cert, args.tls_key
    if args.tls_dir is not None:
        if cert or key or args.insecure_plain:
            raise ConfigError("--tls-dir", "give --tls-dir, --tls-cert/--tls-key or "
                              "--insecure-plain, not several")
        made = hublink.make_hub_tls(args.tls_dir, _tls_names(args.tls_name, args.leaf_host))
        cert, key = str(made.cert), str(made.key)
        done = "issued" if made.issued else "kept"
        print(
            f"# {done} {made.cert}; leaves pin the CA: copy {made.ca} to each entity host and "
            "set nats.hub_ca_file to it, with nats.hub_url = \"tls://HUB_NAME:"
            f"{args.leaf_port}\"",
            file=sys.stderr,
        )
    elif args.tls_name:
        raise ConfigError("--tls-name", "goes with --tls-dir, where the certificate is made")
    text = render_hub_conf(
        entities, store_dir=args.store_dir, host=args.host, port=args.port,
        leaf_host=args.leaf_host, leaf_port=args.leaf_port, server_name=args.server_name,
        tls_cert=cert, tls_key=key, insecure_plain=args.insecure_plain,
        treasurer=check_public_key(args.treasurer) if args.treasurer else "",
        reader=_reader_keys(args.reader), cluster=_cluster(args),
    )
    if args.insecure_plain and not all(map(hublink.is_loopback, (args.leaf_host, args.host))):
        print(
            "entityd.federation: warning: --insecure-plain: the hub takes leaves without "
            "TLS beyond loopback; anyone on the path reads and alters their traffic",
            file=sys.stderr,
        )
    print(text, end="")
    return 0


def _reader_keys(given: str) -> tuple[str, str]:
    if not given:
        print("entityd.federation: warning: no --reader: members cannot read the ledger",
              file=sys.stderr)
        return ("", "")
    fed, sep, books = given.partition(",")
    try:
        if not sep:
            raise ConfigError("nkey", f"{given!r} is not two keys")
        return check_public_key(fed), check_public_key(books)
    except ConfigError as exc:
        raise ConfigError("--reader", f"give FED_NKEY,BOOKS_NKEY as `reader-user` prints "
                          f"them: {exc.problem}") from None


def _cluster(args: argparse.Namespace) -> HubCluster | None:
    if args.cluster:
        return HubCluster(args.cluster, tuple(args.route), args.cluster_host,
                          args.cluster_port, args.cluster_tls_cert, args.cluster_tls_key,
                          args.cluster_tls_ca)
    if args.route or args.cluster_tls_cert or args.cluster_tls_key or args.cluster_tls_ca:
        raise ConfigError("--cluster", "the routes and their TLS go with --cluster NAME")
    return None


def _tls_names(names: list[str], leaf_host: str) -> list[str]:
    """The names to certify: those given, plus the leafnode address if it is one IP."""
    try:
        bound = ipaddress.ip_address(leaf_host.strip("[]"))
    except ValueError:
        return names
    return names if bound.is_unspecified or leaf_host in names else [*names, leaf_host]


def _cmd_leaf_conf(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.expanduser().resolve()
    seed = seed_path(data_dir)
    read_seed(seed)  # fail now, not when the server starts
    ca_file = args.hub_ca_file
    if ca_file:
        path = Path(ca_file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError("--hub-ca-file", f"{path} is not a file; copy the hub's ca.crt")
        ca_file = str(path)  # the leaf's nats-server may run in another directory
    hublink.hub_link(args.hub_url, hub_ca_file=ca_file, hub_insecure=args.hub_insecure)
    text = render_leaf_conf(
        args.name, args.hub_url, seed, domain=args.domain, port=args.port,
        store_dir=data_dir / "nats" / "jetstream", hub_ca_file=ca_file,
    )
    print(text, end="")
    print(
        f"# Run by hand: {SEED_ENV}=\"$(cat {seed})\" nats-server -c leaf.conf",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
