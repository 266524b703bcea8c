"""The entity's Ed25519 identity: created once, kept 0600 in the data dir, never elsewhere."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from .errors import IdentityError

KEY_DIR = "keys"
KEY_FILE = "entity.key"
PUB_FILE = "entity.pub"


@dataclass(frozen=True)
class Identity:
    name: str
    signing_key: SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()

    def __repr__(self) -> str:  # never print the secret
        return f"Identity(name={self.name!r}, public_key={self.public_hex})"


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_DIR / KEY_FILE


def pub_path(data_dir: Path) -> Path:
    return data_dir / PUB_FILE


def create(data_dir: Path) -> Path:
    """Write a new key pair under data_dir/keys (0700 dir, 0600 key); refuse to overwrite."""
    keys = data_dir / KEY_DIR
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys, 0o700)
    path = keys / KEY_FILE
    key = SigningKey.generate()
    write_key(path, key)
    pub_path(data_dir).write_text(bytes(key.verify_key).hex() + "\n")
    return path


def write_key(path: Path, key: SigningKey) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as out:
        out.write(bytes(key).hex() + "\n")


def read_private(path: Path, missing: str,
                 damaged: str = "restore it from a backup") -> str:
    """The stripped text of a secret file, refusing one that group or others can read.

    `missing` is the hint given when the file does not exist, `damaged` when it cannot be
    read as text (not a file, not UTF-8).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"no key at {path}; {missing}") from None
    except PermissionError:
        raise IdentityError(f"cannot read {path}: permission denied") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        return path.read_text().strip()
    except PermissionError:
        raise IdentityError(f"cannot read {path}: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = "it is not a file" if path.is_dir() else (
            "it is not text" if isinstance(exc, UnicodeDecodeError) else str(exc))
        raise IdentityError(f"cannot read {path}: {problem}; {damaged}") from None


def read_key(path: Path) -> SigningKey:
    """Read a hex Ed25519 seed, refusing a file that group or others can read."""
    text = read_private(path, "create one with `entityd init`")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise IdentityError(f"{path} does not hold a hex Ed25519 seed") from None
    if len(seed) != 32:
        raise IdentityError(f"{path} holds {len(seed)} bytes, an Ed25519 seed has 32")
    return SigningKey(seed)


def load(name: str, data_dir: Path) -> Identity:
    """The entity's key; refused if it is not the one its public key file names (a key
    changed by damage is another valid key: another identity, which no peer trusts)."""
    key = read_key(key_path(data_dir))
    if pub_path(data_dir).exists():
        known = read_public(data_dir)
        if bytes(key.verify_key) != known:
            raise IdentityError(
                f"{key_path(data_dir)} is not the key of {pub_path(data_dir)} (public key "
                f"{known.hex()[:16]}..., the one peers and operators trust): restore the "
                "key from a backup (a new key is a new identity)")
    return Identity(name, key)


def read_public(data_dir: Path) -> bytes:
    path = pub_path(data_dir)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read the entity's public key at {path}: {exc}; restore "
                            "it from a backup") from None
    if len(key) != 32:
        raise IdentityError(f"{path} does not hold a 32-byte public key; restore it from a "
                            "backup")
    return key
