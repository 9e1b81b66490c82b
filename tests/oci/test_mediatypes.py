"""Media-type sniffing (containerd stores no media types) and the OCI error body."""

from __future__ import annotations

import json

import pytest

from spegel_py.oci import mediatypes as mt
from spegel_py.oci.errors import ErrorCode, error_body


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            json.dumps({"mediaType": mt.DOCKER_MANIFEST, "config": {}, "layers": []}).encode(),
            mt.DOCKER_MANIFEST,
        ),
        (json.dumps({"mediaType": mt.OCI_INDEX, "manifests": []}).encode(), mt.OCI_INDEX),
        (json.dumps({"schemaVersion": 2, "manifests": []}).encode(), mt.OCI_INDEX),
        (json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode(), mt.OCI_MANIFEST),
        (json.dumps({"architecture": "amd64"}).encode(), mt.OCI_CONFIG),
        (json.dumps({"os": "linux"}).encode(), mt.OCI_CONFIG),
        (json.dumps({"rootfs": {}}).encode(), mt.OCI_CONFIG),
        (b'  \n{"config": {}, "layers": []}', mt.OCI_MANIFEST),  # leading whitespace
        (b'{"config": {}}', mt.OCTET_STREAM),  # config without layers is nothing known
        (b'{"hello": "world"}', mt.OCTET_STREAM),
        (b'{"mediaType": 5, "manifests": []}', mt.OCI_INDEX),  # a non-string mediaType is ignored
        (b'{"mediaType": "a\\r\\nX-Evil: 1"}', mt.OCTET_STREAM),  # never a header injection
        (b'{"mediaType": ""}', mt.OCTET_STREAM),
        (b"[1, 2]", mt.OCTET_STREAM),
        (b"{not json", mt.OCTET_STREAM),
        (b"\x1f\x8b\x08\x00", mt.OCTET_STREAM),
        (b"", mt.OCTET_STREAM),
        (b"[" * 100000, mt.OCTET_STREAM),
        (b"{" + b'"a":' * 50000 + b"1" + b"}" * 50000, mt.OCTET_STREAM),  # deep nesting
        (b'{"manifests": []' + b" " * mt.SNIFF_LIMIT + b"}", mt.OCTET_STREAM),  # over the limit
    ],
)
def test_sniff(data: bytes, expected: str) -> None:
    assert mt.sniff(data) == expected


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.BLOB_UNKNOWN, 404),
        (ErrorCode.MANIFEST_UNKNOWN, 404),
        (ErrorCode.NAME_INVALID, 400),
        (ErrorCode.DIGEST_INVALID, 400),
        (ErrorCode.UNSUPPORTED, 405),
        (ErrorCode.UNAVAILABLE, 503),
        (ErrorCode.TOOMANYREQUESTS, 429),
    ],
)
def test_error_codes(code: ErrorCode, status: int) -> None:
    assert code.status == status
    doc = json.loads(error_body(code, "why", {"digest": "x"}))
    assert doc == {"errors": [{"code": code.name, "message": "why", "detail": {"digest": "x"}}]}
    assert json.loads(error_body(code))["errors"][0]["message"] == code.message
