"""The envelope's faster paths say exactly what the plain ones said: the wire put together
by hand is msgpack's, and SelfSigned's kept bodies recognise only what was signed."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from nacl.signing import SigningKey

from protocol.envelope import KEY_BYTES, SIG_BYTES, SelfSigned, _wire


@pytest.mark.parametrize("size", [0, 1, 0xFF, 0x100, 0x101, 0xFFFF, 0x10000, 1024 * 1024])
def test_hand_made_wire_is_msgpack(size: int) -> None:
    kid, body, sig = b"k" * KEY_BYTES, bytes(range(256)) * (size // 256) + b"b" * (size % 256), \
        b"s" * SIG_BYTES
    assert _wire(kid, body, sig) == msgpack.packb([1, kid, body, sig], use_bin_type=True)


@pytest.mark.parametrize("size", [100, SelfSigned.KEPT_BODY_MAX, SelfSigned.KEPT_BODY_MAX + 1,
                                  100_000])
def test_made_recognises_only_the_signed_body(size: int) -> None:
    key = SigningKey.generate()
    kid = bytes(key.verify_key)
    body = b"\x89" + b"x" * (size - 1)
    sig = key.sign(body).signature
    remembered = SelfSigned(capacity=8)
    remembered.add(kid, body, sig)
    assert remembered.made(kid, body, sig)
    flipped = bytearray(body)
    flipped[size // 2] ^= 1
    assert not remembered.made(kid, bytes(flipped), sig)
    assert not remembered.made(kid, body + b"\x00", sig)
    assert not remembered.made(kid, body[:-1], sig)
    assert not remembered.made(bytes(SigningKey.generate().verify_key), body, sig)


def test_a_short_body_equal_to_a_long_ones_digest_is_not_it() -> None:
    """The digest of a long body is public (anyone who saw the wire can compute it):
    sent as a body of its own under the long one's signature, it must be verified."""
    key = SigningKey.generate()
    kid = bytes(key.verify_key)
    long_body = b"y" * (SelfSigned.KEPT_BODY_MAX + 500)
    sig = key.sign(long_body).signature
    remembered = SelfSigned(capacity=8)
    remembered.add(kid, long_body, sig)
    digest = hashlib.blake2b(long_body, digest_size=32).digest()
    assert not remembered.made(kid, digest, sig)
    assert remembered.made(kid, long_body, sig)
