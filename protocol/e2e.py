"""End-to-end encrypted payloads (PROTOCOL.md section 12): X25519 Box, encrypt then sign.

The sender boxes the msgpack of the kind's payload map for the recipient entity's key,
then seals the ciphertext like any payload, so the signature binds `dst`, `typ` and
`id` to it while the hub, observers and other entities see only ciphertext.
"""

from __future__ import annotations

from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box
from nacl.signing import SigningKey, VerifyKey

from . import kinds
from .envelope import Envelope, _unpack, encoded, pack, seal
from .errors import BadPayload


class Sealer:
    """One entity's encryption keys: boxes for peers, cached per peer key."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._secret = key.to_curve25519_private_key()
        self._boxes: dict[bytes, Box] = {}

    def box(self, peer_key: bytes) -> Box:
        box = self._boxes.get(peer_key)
        if box is None:
            box = Box(self._secret, VerifyKey(peer_key).to_curve25519_public_key())
            self._boxes[peer_key] = box
        return box

    def encrypt(self, peer_key: bytes, message: object) -> tuple[str, bytes]:
        """(typ, nonce || ciphertext) of a registered record, for the holder of `peer_key`."""
        typ, payload = encoded(message)
        plaintext = pack(payload, typ)
        return typ, bytes(self.box(peer_key).encrypt(plaintext))

    def seal(
        self, peer_key: bytes, *, src: str, dst: str, subj: str, message: object,
        corr: bytes | None = None, msg_id: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        """Encrypt `message` for `peer_key`, then sign: (wire, envelope id)."""
        typ, ciphertext = self.encrypt(peer_key, message)
        return seal(self.key, src=src, dst=dst, subj=subj, typ=typ, payload=ciphertext,
                    enc=True, corr=corr, msg_id=msg_id)

    def decrypt(self, envelope: Envelope, max_bytes: int) -> Any:
        """The record an opened envelope carries; plain envelopes pass through.

        BadPayload when the ciphertext does not open under the signer's key, does not
        decode, or does not match the schema of `typ`.
        """
        if not envelope.enc:
            return envelope.message
        try:
            plaintext = self.box(envelope.kid).decrypt(envelope.payload)
        except CryptoError:
            raise BadPayload("the encrypted payload does not open with this entity's key",
                             subject=envelope.subj) from None
        try:
            payload = _unpack(plaintext, max_bytes=max_bytes)
        except Exception as exc:
            raise BadPayload(f"the decrypted payload does not decode: {exc}",
                             subject=envelope.subj) from None
        try:
            return kinds.decode(envelope.typ, payload)
        except BadPayload as exc:
            exc.subject = envelope.subj
            raise
