"""Image pulls through containerd's CRI plugin (``runtime.v1.ImageService``), as the kubelet does.

A CRI pull runs inside the containerd daemon and honours the daemon's own registry
``config_path`` (the node's ``certs.d``), unlike ``ctr images pull --hosts-dir``, which applies
hosts.toml in the ctr process. That is the path production traffic takes.

The three messages needed are tiny, so they are encoded here by hand (protobuf wire format:
field 1 of each message, length-delimited) rather than generated from the CRI API protos, which
Debian does not ship. Field numbers are those of ``k8s.io/cri-api`` ``runtime/v1/api.proto``:
``ImageSpec.image = 1``, ``PullImageRequest.image = 1``, ``PullImageResponse.image_ref = 1``,
``RemoveImageRequest.image = 1``, ``ListImagesResponse.images = 1``, ``Image.id = 1``,
``Image.repo_tags = 2``, ``Image.repo_digests = 3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .procs import HarnessError

SERVICE = "/runtime.v1.ImageService/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a message, in order (other wire types skipped)."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = _read_varint(data, pos)
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise HarnessError(f"unexpected protobuf wire type {wire}")
    return out


def _image_spec(ref: str) -> bytes:
    return _field(1, _field(1, ref.encode()))


@dataclass(frozen=True)
class CriImage:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]


def _call(socket: Path, method: str, request: bytes, timeout: float) -> bytes:
    import grpc  # here: only CRI tests pay for the import

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = channel.unary_unary(SERVICE + method, request_serializer=bytes, response_deserializer=bytes)
        try:
            response: bytes = stub(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise HarnessError(f"CRI {method} on {socket} failed: {exc}") from exc
    return response


def pull(socket: Path, ref: str, *, timeout: float = 300.0) -> str:
    """CRI ``PullImage``; returns the image reference (id) containerd reports."""
    response = _call(socket, "PullImage", _image_spec(ref), timeout)
    return next((v.decode() for n, v in _fields(response) if n == 1), "")


def remove(socket: Path, ref: str, *, timeout: float = 60.0) -> None:
    _call(socket, "RemoveImage", _image_spec(ref), timeout)


def images(socket: Path, *, timeout: float = 60.0) -> list[CriImage]:
    out = []
    for number, image in _fields(_call(socket, "ListImages", b"", timeout)):
        if number != 1:
            continue
        fields = _fields(image)
        out.append(
            CriImage(
                id=next((v.decode() for n, v in fields if n == 1), ""),
                repo_tags=[v.decode() for n, v in fields if n == 2],
                repo_digests=[v.decode() for n, v in fields if n == 3],
            )
        )
    return out
