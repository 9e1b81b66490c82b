"""The private network's key file (``--router-psk-file``) and its cipher, without a network: the
format go-libp2p and k3s write is accepted, anything else refused in one line that never shows
the key; XSalsa20 agrees with libsodium's; the stream wrapper survives any chunking."""

from __future__ import annotations

import os
import random
from pathlib import Path

import nacl.secret
import pytest
import trio
import trio.testing
from libp2p.io.exceptions import IOException

from spegel_py.cli import main
from spegel_py.routing.libp2p.pnet import HELLO, KeyStream, protect, xsalsa20
from spegel_py.routing.libp2p.psk import PreSharedKey, decode, load, read_file
from spegel_py.settings import RegistrySettings
from spegel_py.settings import load as load_settings

HEX = "4f6b2d" + "c0ffee" * 8 + "a1b2c3d4e5"  # 64 hex digits
KEY = bytes.fromhex(HEX)
GOOD = f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX}\n".encode()

ACCEPTED = {
    "go/k3s (trailing LF)": GOOD,
    "no trailing newline": GOOD[:-1],
    "CRLF": GOOD.replace(b"\n", b"\r\n"),
    "CRLF, none at the end": GOOD.replace(b"\n", b"\r\n")[:-2],
    "upper-case hex": GOOD.replace(HEX.encode(), HEX.upper().encode()),
}

REFUSED = {
    "empty": (b"", "first line"),
    "header only": (b"/key/swarm/psk/1.0.0/\n", "second line"),
    "other header": (GOOD.replace(b"1.0.0", b"2.0.0"), "first line"),
    "base64 (go reads it, js does not)": (GOOD.replace(b"/base16/", b"/base64/"), "second line"),
    "no key line": (b"/key/swarm/psk/1.0.0/\n/base16/\n", "third line"),
    "short key": (GOOD.replace(HEX.encode(), HEX[:62].encode()), "third line"),
    "long key": (GOOD.replace(HEX.encode(), HEX.encode() + b"00"), "third line"),
    "not hex": (GOOD.replace(HEX[:2].encode(), b"zz"), "third line"),
    "spaces around the key": (GOOD.replace(HEX.encode(), b" " + HEX.encode()), "third line"),
    "a fourth line": (GOOD + b"extra\n", "nothing after"),
    "two trailing newlines": (GOOD + b"\n", "nothing after"),
    "CR line ends": (GOOD.replace(b"\n", b"\r"), "first line"),
    "byte order mark": (b"\xef\xbb\xbf" + GOOD, "first line"),
    "the key alone": (HEX.encode() + b"\n", "first line"),
}


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=list(ACCEPTED))
def test_the_standard_format_is_read(data: bytes) -> None:
    assert decode(data).key == KEY


@pytest.mark.parametrize(("data", "reason"), REFUSED.values(), ids=list(REFUSED))
def test_anything_else_is_refused_with_a_reason_that_never_shows_the_key(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        decode(data)
    assert HEX[:16].lower() not in str(err.value).lower()


def test_the_key_is_not_in_its_repr_only_a_fingerprint() -> None:
    psk = PreSharedKey(KEY)
    other = PreSharedKey(bytes(32))
    assert HEX not in repr(psk) and HEX not in str(psk) and KEY.hex() not in repr(psk)
    assert psk.fingerprint in repr(psk)
    assert psk.fingerprint == PreSharedKey(KEY).fingerprint != other.fingerprint
    with pytest.raises(ValueError):
        PreSharedKey(KEY[:31])


def bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "psk"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "too large":
        path.write_bytes(GOOD + b"#" * 8192)
    elif kind == "malformed":
        path.write_bytes(GOOD.replace(b"/base16/", b"/bin/"))
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    return path


FILE_ERRORS = {
    "missing": r"cannot open .*No such file",
    "directory": "not a regular file",
    "fifo": "not a regular file",
    "too large": "too large",
    "malformed": "not a libp2p pre-shared key file: the second line",
    "dangling link": "cannot open",
}


@pytest.mark.parametrize("kind", list(FILE_ERRORS))
def test_a_bad_file_is_one_line_on_stderr_and_exit_status_2(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(ValueError, match=FILE_ERRORS[kind]):
        read_file(path)
    by_flag = (["registry", "--router-psk-file", str(path)], {})
    by_env = (["registry"], {"ROUTER_PSK_FILE": str(path)})
    for argv, env in (by_flag, by_env):
        assert main(argv, env) == 2
        err = capsys.readouterr().err
        assert err.startswith("spegel-py: error: invalid --router-psk-file (ROUTER_PSK_FILE): "), err
        assert err.count("\n") == 1 and "Traceback" not in err and HEX[:16] not in err


def test_a_kubernetes_secret_volume_is_read_through_its_links(tmp_path: Path) -> None:
    """A Secret volume: ``key -> ..data/key``, ``..data -> ..2026_01_01...`` (swapped on update)."""
    version = tmp_path / "..2026_12_03_13_00_00.000000001"
    version.mkdir()
    (version / "psk").write_bytes(GOOD)
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "psk").symlink_to("..data/psk")
    assert read_file(tmp_path / "psk").key == KEY


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    path.write_bytes(GOOD)
    path.chmod(0)
    with pytest.raises(ValueError, match=r"cannot open .*Permission denied"):
        read_file(path)


def test_an_empty_value_means_no_private_network() -> None:
    assert load(load_settings(RegistrySettings, {}, {}).router_psk_file) is None
    assert load(load_settings(RegistrySettings, {}, {"ROUTER_PSK_FILE": ""}).router_psk_file) is None


def test_the_flag_and_the_env_var_name_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    path.write_bytes(GOOD)
    by_flag = load_settings(RegistrySettings, {"router_psk_file": str(path)}, {"ROUTER_PSK_FILE": "/nowhere"})
    by_env = load_settings(RegistrySettings, {}, {"ROUTER_PSK_FILE": str(path)})
    assert load(by_flag.router_psk_file) == load(by_env.router_psk_file) == PreSharedKey(KEY)


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 1000, 70_000])
def test_xsalsa20_is_libsodiums(length: int) -> None:
    """libsodium's secretbox is XSalsa20-Poly1305: its ciphertext after the 16-byte tag is the
    message XORed with the key stream from byte 32 on (the first 32 make the Poly1305 key)."""
    key, nonce = os.urandom(32), os.urandom(24)
    message = os.urandom(length)
    boxed = nacl.secret.SecretBox(key).encrypt(message, nonce).ciphertext[16:]
    stream = xsalsa20(key, nonce)
    stream.encrypt(bytes(32))
    ours = b"".join(stream.encrypt(message[i : i + 37]) for i in range(0, length, 37))
    assert ours == boxed


@pytest.mark.parametrize("seed", range(8))
def test_the_key_stream_is_libsodiums_in_any_pieces(seed: int) -> None:
    """Small pieces are XORed with key stream produced ahead, large ones go to the cipher: in
    any mix, the bytes are libsodium's (as above)."""
    key, nonce = os.urandom(32), os.urandom(24)
    message = os.urandom(200_000)
    boxed = nacl.secret.SecretBox(key).encrypt(message, nonce).ciphertext[16:]
    stream = KeyStream(key, nonce)
    stream.xor(bytes(32))
    pieces, i, rnd = [], 0, random.Random(seed)
    while i < len(message):
        step = rnd.choice([1, 12, 511, 512, 513, 5000, 16_383, 16_384, 40_000])
        pieces.append(stream.xor(message[i : i + step]))
        i += step
    assert b"".join(pieces) == boxed


class Pipe:
    """One end of an in-memory connection, with reads cut into pieces of at most 7 bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self._stream.receive_some(min(n or 7, 7))

    async def close(self) -> None:
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 1)


async def sent(message: bytes, writer_key: bytes | None, reader_key: bytes) -> bytes:
    """``message`` written in pieces through one end (protected by ``writer_key``, or plain when
    None), as the other end (protected by ``reader_key``) reads it."""
    a, b = trio.testing.memory_stream_pair()
    writer = Pipe(a) if writer_key is None else await protect(Pipe(a), PreSharedKey(writer_key))
    reader = await protect(Pipe(b), PreSharedKey(reader_key))
    for i in range(0, len(message), 333):
        await writer.write(message[i : i + 333])
    got = b""
    while len(got) < len(message):
        got += await reader.read(100)
    return got


def test_a_protected_stream_round_trips_in_any_pieces() -> None:
    message = HELLO + os.urandom(5000)
    assert trio.run(sent, message, KEY, KEY) == message


@pytest.mark.parametrize(("writer_key", "reason"), [(bytes(32), "another"), (None, "no pre-shared key")])
def test_a_peer_with_another_key_or_none_is_refused_at_its_first_message(
    writer_key: bytes | None, reason: str
) -> None:
    """Every libp2p connection opens with multistream-select's hello: anything else, at once."""
    with pytest.raises(IOException, match=reason):
        trio.run(sent, HELLO + b"\x07/noise\n", writer_key, KEY)
