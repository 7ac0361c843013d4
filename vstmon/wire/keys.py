"""CURVE key files: ``vstmon keys generate DIR [--name NAME]``, reading and checking them, client set-up.

The files are ZeroMQ certificates in the format of czmq's ``zcert`` and pyzmq's ``zmq.auth``
(``NAME.key``: the public key; ``NAME.key_secret``: the public and the secret key), so keys made with
``zmq.auth.create_certificates`` or czmq work here and keys made here work there. Keys are Z85 text
(40 characters for 32 bytes).

Who holds what:

- the daemon: its own secret certificate (``publish.curve.secret_key``) and a directory of the public
  certificates of the clients it lets in (``publish.curve.allowed_keys``);
- a client (``vstmon listen``, ``vstmon ctl``, ``vstmon.wire.client.Subscriber``): the daemon's public certificate
  (``--server-key``) and its own secret certificate (``--client-key``).

``vstmon keys generate`` writes the secret file with mode 0600 from the start (created exclusively, never
world-readable for an instant) and refuses to overwrite either file. pyzmq's ``create_certificates`` is not
used for writing because it creates the secret file with the process umask (typically 0644) and overwrites
existing keys; reading uses pyzmq's ``load_certificate``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import stat
import struct
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
from zmq.utils import z85

from vstmon.errors import VstmonError

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "KeyPair",
    "add_arguments",
    "describe_handshake_failure",
    "generate_certificates",
    "read_allowed_keys",
    "read_public_certificate",
    "read_secret_certificate",
    "run",
    "secure_client_socket",
]

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_KEY_FILE_BYTES = 64 * 1024  # a certificate is ~300 bytes; anything this large is not one
_KEY_CHARS = 40  # Z85 text of a 32-byte key
_Z85_ALPHABET = frozenset(z85.Z85CHARS.decode("ascii"))
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class KeyPair(NamedTuple):
    """A CURVE key pair as Z85 bytes (what pyzmq's ``curve_*key`` socket options take)."""

    public: bytes
    secret: bytes


# -- writing ----------------------------------------------------------------------------------------------------
def _certificate_text(kind: str, public: bytes, secret: bytes | None) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"#   ZeroMQ CURVE {kind} certificate, generated on {now} by vstmon keys generate"]
    if secret is not None:
        lines.append(
            "#   Keep it secret: readable by its owner only (mode 0600); never copy it to another host."
        )
    else:
        lines.append("#   Public: copy it to the hosts that must recognise this key.")
    lines += ["", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` (exclusive: an existing file is an error), write ``text``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off; it never adds any
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_certificates(directory: str | os.PathLike[str], name: str = "vstmon") -> tuple[Path, Path]:
    """Write a new key pair as ``DIR/NAME.key`` (public, mode 0644) and ``DIR/NAME.key_secret`` (0600).

    ``DIR`` is created (mode 0700) when missing. Raises ``VstmonError`` for a bad name, an existing file (keys
    are never overwritten) or a directory that cannot be written. Returns (public file, secret file).
    """
    if not _NAME_RE.match(name):
        raise VstmonError(
            f"key name {name!r} must be 1-64 characters of letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    folder = Path(directory)
    public_path, secret_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise VstmonError(f"{folder}: cannot create the key directory: {error.strerror or error}") from None
    for path in (public_path, secret_path):
        if path.exists() or path.is_symlink():
            raise VstmonError(f"{path} already exists; keys are never overwritten (remove it or pick --name)")
    public, secret = zmq.curve_keypair()
    try:
        _write_new(secret_path, _certificate_text("secret", public, secret), 0o600)
        try:
            _write_new(public_path, _certificate_text("public", public, None), 0o644)
        except OSError:
            secret_path.unlink(missing_ok=True)  # no half pair left behind
            raise
    except OSError as error:
        where = error.filename or folder
        raise VstmonError(f"{where}: cannot write the key file: {error.strerror or error}") from None
    return public_path, secret_path


# -- reading ----------------------------------------------------------------------------------------------------
def _check_key(path: Path, which: str, value: bytes) -> bytes:
    text = value.decode("ascii", errors="replace")
    if len(value) != _KEY_CHARS or not set(text) <= _Z85_ALPHABET:
        raise ValueError(f"{path}: the {which} is not a CURVE key (expected {_KEY_CHARS} Z85 characters)")
    try:
        z85.decode(value)
    except (ValueError, struct.error):
        raise ValueError(f"{path}: the {which} is not a CURVE key (not valid Z85)") from None
    return value


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate file; ``ValueError`` naming the file and the problem."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} is a directory, not a key file")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is {info.st_size} bytes: not a key file (at most {MAX_KEY_FILE_BYTES})")
    try:
        with path.open("rb") as file:
            file.read(1)
        public, secret = zmq.auth.load_certificate(path)
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    except ValueError:
        raise ValueError(
            f"{path} is not a ZeroMQ CURVE certificate (no public-key line; make keys with "
            "`vstmon keys generate`)"
        ) from None
    _check_key(path, "public-key", public)
    if secret is not None:
        _check_key(path, "secret-key", secret)
    return public, secret


def read_secret_certificate(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a secret certificate (``NAME.key_secret``); ``ValueError`` naming the file otherwise.

    Refused: a file other users can read, write or run (``chmod 600`` it), a public certificate (no secret
    key), and a secret key whose public key is not the one written beside it.
    """
    path = Path(path)
    public, secret = _read_certificate(path)
    if secret is None:
        raise ValueError(
            f"{path} holds no secret-key: it is a public certificate (give the {SECRET_SUFFIX} file)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise ValueError(
            f"{path} is accessible to other users (mode {mode:04o}): a secret key must not be; chmod 600 it"
        )
    if zmq.curve_public(secret) != public:
        raise ValueError(f"{path}: its public-key does not belong to its secret-key (a damaged file?)")
    return KeyPair(public, secret)


def read_public_certificate(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85) of a certificate file, public or secret; ``ValueError`` naming the file."""
    return _read_certificate(Path(path))[0]


def read_allowed_keys(directory: str | os.PathLike[str]) -> dict[bytes, Path]:
    """The public keys in ``DIR/*.key`` (as ``zmq.auth.load_certificates`` finds them) -> their files.

    ``ValueError`` naming the problem: the directory is missing, not a directory or unreadable, holds no
    ``*.key`` file, or one of them is not a certificate. Secret certificates there (``*.key_secret``) are
    not read.
    """
    folder = Path(directory)
    if not folder.exists():
        raise ValueError(f"{folder} does not exist (a directory of client public keys, NAME{PUBLIC_SUFFIX})")
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a directory (a directory of client public keys, NAME{PUBLIC_SUFFIX})"
        )
    try:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(PUBLIC_SUFFIX))
    except OSError as error:
        raise ValueError(f"{folder} cannot be read: {error.strerror or error}") from None
    keys: dict[bytes, Path] = {}
    for path in files:
        keys.setdefault(read_public_certificate(path), path)
    if not keys:
        raise ValueError(
            f"{folder} holds no client public key (*{PUBLIC_SUFFIX}), so no client could connect; "
            f"copy a client's NAME{PUBLIC_SUFFIX} there (`vstmon keys generate DIR --name NAME` makes one)"
        )
    return keys


# -- clients ----------------------------------------------------------------------------------------------------
def secure_client_socket(
    socket: zmq.Socket,
    server_key: str | os.PathLike[str] | None,
    client_key: str | os.PathLike[str] | None,
) -> bool:
    """Make ``socket`` a CURVE client when keys are given (before it connects); True when it is one.

    ``server_key``: the daemon's public certificate (its ``NAME.key``); ``client_key``: this client's secret
    certificate (``NAME.key_secret``, whose ``NAME.key`` is in the daemon's ``allowed_keys``). Both or neither;
    otherwise, or for a bad file, ``VstmonError`` naming the option and the file.
    """
    if server_key is None and client_key is None:
        return False
    if server_key is None or client_key is None:
        missing = "--server-key" if server_key is None else "--client-key"
        raise VstmonError(
            "CURVE needs both --server-key (the daemon's public key file, NAME.key) and --client-key (this "
            f"client's secret key file, NAME.key_secret); {missing} is missing"
        )
    try:
        server_public = read_public_certificate(server_key)
    except ValueError as error:
        raise VstmonError(f"--server-key: {error}") from None
    try:
        pair = read_secret_certificate(client_key)
    except ValueError as error:
        raise VstmonError(f"--client-key: {error}") from None
    socket.curve_serverkey = server_public
    socket.curve_publickey = pair.public
    socket.curve_secretkey = pair.secret
    return True


def describe_handshake_failure(event: int, value: int, curve: bool) -> str:
    """What a failed ZeroMQ handshake (a socket monitor event) most likely means, for a person."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the daemon refused this client's key (authentication status {value}): its public key "
            "(NAME.key beside --client-key) is not in the daemon's publish.curve.allowed_keys"
        )
    if curve:
        return (
            "the CURVE handshake failed: is --server-key the daemon's public key, and does the daemon use "
            "CURVE (publish.curve)?"
        )
    return (
        "the handshake failed: the daemon probably requires CURVE (publish.curve); give --server-key and "
        "--client-key"
    )


# -- vstmon keys ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="write a new CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600)",
    )
    generate.add_argument(
        "directory", metavar="DIR", help="where to write the two files (created if missing)"
    )
    generate.add_argument(
        "--name", default="vstmon", metavar="NAME", help="file name without extension (default: vstmon)"
    )


def run(args: argparse.Namespace) -> int:
    public_path, secret_path = generate_certificates(args.directory, args.name)
    print(f"public key:  {public_path}")
    print(f"secret key:  {secret_path}  (mode 0600: keep it on this host)")
    print(
        f"For the daemon: publish.curve.secret_key: {secret_path}; clients connect with --server-key "
        f"{public_path.name} (a copy of the public key)."
    )
    print(
        f"For a client: copy {public_path.name} into the daemon's publish.curve.allowed_keys directory; connect "
        f"with --client-key {secret_path}."
    )
    return 0
