"""The entity's A2A agent card: built from its config, signed with its Ed25519 key as a
JWS (alg EdDSA) over the card's canonical JSON (RFC 8785, the card without its
signatures and empty values), as the A2A spec and a2a-sdk's verifier expect.

The public key travels twice: in the card itself (an extension, so it is signed) and in
the JWS's protected header as a JWK. A client that already knows the entity's key (a
peer's pinned key) checks it against the card's; anyone else learns it from the card.
Only the peer actor signs (with FederationAccess.sign_agent_card); the web actor, which
faces the network, never holds the key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentCardSignature,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from google.protobuf.json_format import MessageToDict, ParseDict

from entityd import Config

from ..untrusted import json_loads

KEY_EXTENSION = "urn:entityd:ed25519-public-key"
ALGORITHM = "EdDSA"
RPC_PATH = "/a2a"
CARD_PATH = "/.well-known/agent-card.json"
SCHEME = "apiKey"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def build(config: Config, url: str, public_key: bytes) -> AgentCard:
    """The card, unsigned, of the entity serving A2A at `url` (the RPC endpoint)."""
    where = urlsplit(url)
    if where.scheme not in ("http", "https") or not where.hostname or len(url) > 300:
        raise ValueError(f"{url[:80]!r} is not an http(s) URL")
    capabilities = list(config.peers.capabilities)
    skills = [AgentSkill(id=c, name=c, description=f"{config.name} can do {c} work",
                         tags=[c]) for c in capabilities]
    if not skills:
        skills = [AgentSkill(id="general", name="general", tags=["general"],
                             description=f"a task for {config.name}, run as a delegation")]
    return AgentCard(
        name=config.name,
        description=(f"{config.name}, an autonomous entity of entityd: a message becomes a "
                     "task it works on, streamed as it goes."),
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        version="1.0",
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=True,
            extensions=[AgentExtension(uri=KEY_EXTENSION, description="the entity's "
                                       "Ed25519 public key, its card signed with it",
                                       params={"hex": public_key.hex()})]),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=skills,
        security_schemes={SCHEME: SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="Bearer", description="an API key from the entity's operator "
            "(`entityctl a2a key NAME`); X-API-Key works too"))},
        security_requirements=[SecurityRequirement(schemes={SCHEME: StringList()})],
    )


def canonical(card: AgentCard) -> bytes:
    """The card's bytes a signature covers (a2a-sdk's verifier computes the same)."""
    data = MessageToDict(card)
    data.pop("signatures", None)
    return json.dumps(_clean(data), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ("", [], {}, None)}
    if isinstance(value, list):
        return [c for c in (_clean(v) for v in value) if c not in ("", [], {}, None)]
    return value


def header(name: str, public_key: bytes) -> str:
    """The JWS protected header, base64url."""
    return b64url(json.dumps({"alg": ALGORITHM, "kid": name, "typ": "JOSE",
                              "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_key)}},
                             separators=(",", ":")).encode())


def signing_input(card: AgentCard, protected: str) -> bytes:
    return f"{protected}.{b64url(canonical(card))}".encode()


def sign(card: AgentCard, name: str, public_key: bytes,
         signer: Callable[[bytes], bytes]) -> AgentCard:
    """`card` with its signature made by `signer` (raw Ed25519 over the JWS input)."""
    protected = header(name, public_key)
    signature = signer(signing_input(card, protected))
    signed = AgentCard()
    signed.CopyFrom(card)
    signed.signatures.append(AgentCardSignature(protected=protected,
                                                signature=b64url(signature)))
    return signed


def to_json(card: AgentCard) -> str:
    return json.dumps(MessageToDict(card), separators=(",", ":"))


def from_json(text: str) -> AgentCard:
    return ParseDict(json_loads(text), AgentCard(), ignore_unknown_fields=True)


def public_key_of(card: AgentCard) -> bytes | None:
    """The Ed25519 key the card names for itself, if any."""
    for extension in card.capabilities.extensions:
        if extension.uri == KEY_EXTENSION:
            try:
                key = bytes.fromhex(str(extension.params["hex"]))
            except (KeyError, ValueError):
                return None
            return key if len(key) == 32 else None
    return None


def verify(card: AgentCard, public_key: bytes | None = None) -> bytes:
    """The key that signed `card` (the one given, else the card's own); ValueError if no
    signature of the card verifies under it."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = public_key or public_key_of(card)
    if key is None:
        raise ValueError("the card names no Ed25519 key")
    if not card.signatures:
        raise ValueError("the card is not signed")
    for signature in card.signatures:
        try:
            protected = json_loads(unb64url(signature.protected))
            if protected.get("alg") != ALGORITHM:
                continue
            VerifyKey(key).verify(signing_input(card, signature.protected),
                                  unb64url(signature.signature))
            return key
        except (ValueError, BadSignatureError):
            continue
    raise ValueError("no signature of the card verifies with its Ed25519 key")
