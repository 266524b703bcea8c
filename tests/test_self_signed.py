"""A process does not verify again what it signed itself, and nothing else passes for it.

protocol.envelope.SelfSigned remembers the signatures `seal` made lately; step 6 of
`open` takes a wire whose signature, key and body all match one of them without running
Ed25519. These are the attacks on that shortcut: every way of reusing a remembered
signature on other bytes must still be checked by Ed25519 and refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import msgpack
import pytest
from nacl.signing import VerifyKey

from protocol import BadSignature, Replayed, ReplayGuard, UnknownKey, WrongSender
from protocol.envelope import SELF_SIGNED, SelfSigned

from .test_envelope import ALPHA, BETA, MALLORY, ping, receive, trusted


@pytest.fixture
def ed25519_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every Ed25519 verification made, by the signed message's length."""
    calls: list[bytes] = []
    real = VerifyKey.verify

    def counted(self: VerifyKey, smessage: bytes, signature: bytes | None = None) -> bytes:
        calls.append(smessage)
        return real(self, smessage, signature)

    monkeypatch.setattr(VerifyKey, "verify", counted)
    yield calls


def _parts(wire: bytes) -> list[bytes]:
    return msgpack.unpackb(wire)


def _wire(version: int, kid: bytes, body: bytes, sig: bytes) -> bytes:
    return msgpack.packb([version, kid, body, sig], use_bin_type=True)


def test_a_wire_sealed_here_opens_without_ed25519(ed25519_calls: list[bytes]) -> None:
    env = receive(ping())
    assert env.src == "alpha/peer"
    assert ed25519_calls == []


def test_a_wire_sealed_elsewhere_is_verified(ed25519_calls: list[bytes]) -> None:
    wire = ping()
    SELF_SIGNED.clear()  # as if another process had sealed it
    receive(wire)
    assert len(ed25519_calls) == 1


def test_a_remembered_signature_over_another_body_is_refused(
    ed25519_calls: list[bytes],
) -> None:
    honest = _parts(ping(dst="beta/peer"))
    other = _parts(ping(dst="beta/coder"))
    # The signature sealed for one body, sent with the other (both remembered here).
    with pytest.raises(BadSignature):
        receive(_wire(1, honest[1], other[2], honest[3]))
    assert len(ed25519_calls) == 1


def test_a_remembered_signature_under_another_trusted_key_is_refused(
    ed25519_calls: list[bytes],
) -> None:
    _, _, body, sig = _parts(ping(ALPHA))
    ping(BETA)  # beta's key has signed here too
    with pytest.raises(BadSignature):
        receive(_wire(1, bytes(BETA.verify_key), body, sig))
    assert len(ed25519_calls) == 1


def test_every_bit_of_a_remembered_wire_changed_is_refused() -> None:
    version, kid, body, sig = _parts(ping())
    for i in range(len(body)):
        for bit in (0x01, 0x80):
            changed = bytearray(body)
            changed[i] ^= bit
            with pytest.raises(BadSignature):  # step 6 comes before the body is read
                receive(_wire(version, kid, bytes(changed), sig))


def test_a_key_removed_from_the_ring_is_refused_even_for_what_it_signed_here() -> None:
    wire = ping()
    keyring = trusted()
    keyring.remove(bytes(ALPHA.verify_key))
    with pytest.raises(UnknownKey):
        receive(wire, keyring=keyring)


def test_an_untrusted_key_that_signed_here_is_still_unknown() -> None:
    with pytest.raises(UnknownKey):
        receive(ping(MALLORY))


def test_the_later_checks_still_run_on_a_wire_sealed_here() -> None:
    replay = ReplayGuard()
    wire = ping()
    receive(wire, replay=replay)
    with pytest.raises(Replayed):
        receive(wire, replay=replay)
    with pytest.raises(WrongSender):  # alpha's key, signing as beta
        receive(ping(src="beta/peer", dst="beta/coder"), local="beta/coder")


def test_it_remembers_a_bounded_number_and_forgets_the_oldest(
    ed25519_calls: list[bytes],
) -> None:
    remembered = SelfSigned(capacity=3)
    parts = [_parts(ping(ts=1_767_225_600_000 + i)) for i in range(4)]
    for _, kid, body, sig in parts:
        remembered.add(kid, body, sig)
    assert len(remembered._made) == 3
    assert not remembered.made(*parts[0][1:])
    assert all(remembered.made(*p[1:]) for p in parts[1:])


def test_sealing_on_many_threads_at_once_keeps_it_consistent() -> None:
    remembered = SelfSigned(capacity=64)
    _, kid, body, sig = _parts(ping())
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(2_000):
                remembered.add(kid, body + bytes([k, i % 256]), sig[:-2] + bytes([k, i % 256]))
                remembered.made(kid, body, sig)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(remembered._made) <= 64
