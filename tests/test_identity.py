"""The entity's key on disk: created private, never overwritten, refused when exposed or broken."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from entityd import identity
from entityd.errors import IdentityError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_create_writes_a_private_key_and_the_public_key(tmp_path: Path) -> None:
    data = tmp_path / "entity-a"
    path = identity.create(data)
    assert path == data / "keys" / "entity.key" == identity.key_path(data)
    assert mode(data / "keys") == 0o700
    assert mode(path) == 0o600
    key = identity.read_key(path)
    public = bytes(key.verify_key)
    assert (data / "entity.pub").read_text().strip() == public.hex()
    assert identity.read_public(data) == public
    loaded = identity.load("entity-a", data)
    assert loaded.name == "entity-a"
    assert loaded.public_key == public and loaded.public_hex == public.hex()
    # The key on disk signs: what it signs verifies under the published public key.
    signed = loaded.signing_key.sign(b"hello")
    assert loaded.signing_key.verify_key.verify(signed) == b"hello"


def test_create_tightens_an_existing_keys_dir(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)
    os.chmod(tmp_path / "keys", 0o755)
    identity.create(tmp_path)
    assert mode(tmp_path / "keys") == 0o700


def test_create_gives_each_entity_its_own_key(tmp_path: Path) -> None:
    identity.create(tmp_path / "a")
    identity.create(tmp_path / "b")
    assert identity.read_public(tmp_path / "a") != identity.read_public(tmp_path / "b")


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = identity.create(tmp_path)
    secret = path.read_bytes()
    public = (tmp_path / "entity.pub").read_bytes()
    with pytest.raises(IdentityError, match="already exists; refusing to overwrite"):
        identity.create(tmp_path)
    assert path.read_bytes() == secret
    assert (tmp_path / "entity.pub").read_bytes() == public


def test_write_key_refuses_to_overwrite_any_file(tmp_path: Path) -> None:
    path = tmp_path / "operator.key"
    path.write_text("precious\n")
    with pytest.raises(IdentityError, match="already exists"):
        identity.write_key(path, SigningKey.generate())
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o700 | 0o020])
def test_read_key_refuses_a_key_others_can_reach(tmp_path: Path, bits: int) -> None:
    path = identity.create(tmp_path)
    os.chmod(path, bits)
    with pytest.raises(IdentityError) as caught:
        identity.read_key(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"mode {bits:o}" in message
    assert f"chmod 600 {path}" in message


def test_read_key_accepts_owner_only_modes(tmp_path: Path) -> None:
    path = identity.create(tmp_path)
    expected = identity.read_key(path)
    os.chmod(path, 0o400)
    assert bytes(identity.read_key(path)) == bytes(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not a key at all\n", "does not hold a hex Ed25519 seed"),
        ("zz" * 32 + "\n", "does not hold a hex Ed25519 seed"),
        ("ab" * 31 + "\n", "holds 31 bytes, an Ed25519 seed has 32"),
        ("ab" * 33 + "\n", "holds 33 bytes, an Ed25519 seed has 32"),
        ("ab" * 64 + "\n", "holds 64 bytes"),
        ("", "holds 0 bytes"),
    ],
)
def test_read_key_refuses_a_broken_seed(tmp_path: Path, text: str, problem: str) -> None:
    path = write_private(tmp_path / "entity.key", text)
    with pytest.raises(IdentityError) as caught:
        identity.read_key(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_missing_key_suggests_entityd_init(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="create one with `entityd init`"):
        identity.load("entity-a", tmp_path)


@pytest.mark.parametrize("text", ["", "xyz\n", "ab" * 31 + "\n"])
def test_read_public_refuses_a_broken_public_key(tmp_path: Path, text: str) -> None:
    (tmp_path / "entity.pub").write_text(text)
    with pytest.raises(IdentityError, match=r"entity\.pub"):
        identity.read_public(tmp_path)


def test_read_public_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot read the entity's public key"):
        identity.read_public(tmp_path)


def test_repr_never_shows_the_secret(tmp_path: Path) -> None:
    identity.create(tmp_path)
    ident = identity.load("entity-a", tmp_path)
    seed_hex = bytes(ident.signing_key).hex()
    assert seed_hex == identity.key_path(tmp_path).read_text().strip()
    for text in (repr(ident), str(ident), f"{ident}", repr([ident]), repr({"id": ident})):
        assert seed_hex not in text
        assert seed_hex.upper() not in text
        assert ident.public_hex in text
