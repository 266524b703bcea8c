"""Which Ed25519 keys a receiver accepts, and which entity each key speaks for."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .errors import BadSignature, UnknownKey

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A trusted key: the entity it may speak as, and a label for logs (e.g. operator:alice)."""

    entity: str
    label: str
    verify_key: VerifyKey


class Keyring:
    def __init__(self) -> None:
        self._keys: dict[bytes, KeyEntry] = {}

    def add(self, public_key: bytes, entity: str, label: str | None = None) -> None:
        if len(public_key) != KEY_BYTES:
            raise ValueError(f"an Ed25519 public key has {KEY_BYTES} bytes, not {len(public_key)}")
        known = self._keys.get(public_key)
        if known is not None and known.entity != entity:
            raise ValueError(
                f"key {public_key.hex()[:16]}... already speaks for {known.entity!r}"
            )
        self._keys[public_key] = KeyEntry(entity, label or entity, VerifyKey(public_key))

    def remove(self, public_key: bytes) -> None:
        self._keys.pop(public_key, None)

    def lookup(self, kid: bytes) -> KeyEntry:
        entry = self._keys.get(kid)
        if entry is None:
            raise UnknownKey(f"key {kid.hex()[:16]}... is not trusted here")
        return entry

    def verify(self, kid: bytes, signed: bytes, signature: bytes) -> KeyEntry:
        entry = self.lookup(kid)
        try:
            entry.verify_key.verify(signed, signature)
        except BadSignatureError:
            raise BadSignature(f"signature does not verify for key {kid.hex()[:16]}...") from None
        return entry

    def __contains__(self, kid: bytes) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)
