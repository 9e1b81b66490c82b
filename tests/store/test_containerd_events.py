"""Decoding containerd event envelopes (no daemon needed): what becomes an Event, what is dropped."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from spegel_py.errors import ConfigurationError
from spegel_py.store.base import Event, EventKind
from spegel_py.store.containerd._api.events import content_pb2, image_pb2
from spegel_py.store.containerd._api.services.events.v1 import events_pb2
from spegel_py.store.containerd.events import BARRIER_TOPIC, decode, subscribe_filters
from spegel_py.store.containerd.rpc import validate_namespace

NAME = "example.com/test/small:v1"
DIGEST = "sha256:" + "ab" * 32


def envelope(topic: str, message: object, namespace: str = "k8s.io") -> events_pb2.Envelope:
    # containerd's type URLs have no "/" (so Any.Unpack would refuse them): build them the same way
    full_name = message.DESCRIPTOR.full_name  # type: ignore[attr-defined]
    payload = any_pb2.Any(type_url=full_name, value=message.SerializeToString())  # type: ignore[attr-defined]
    return events_pb2.Envelope(namespace=namespace, topic=topic, event=payload)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (envelope("/images/create", image_pb2.ImageCreate(name=NAME)), Event(EventKind.IMAGE_CREATE, NAME)),
        (envelope("/images/update", image_pb2.ImageUpdate(name=NAME)), Event(EventKind.IMAGE_UPDATE, NAME)),
        (envelope("/images/delete", image_pb2.ImageDelete(name=NAME)), Event(EventKind.IMAGE_DELETE, NAME)),
        (
            envelope("/content/delete", content_pb2.ContentDelete(digest=DIGEST)),
            Event(EventKind.CONTENT_DELETE, DIGEST),
        ),
        (envelope("/images/create", image_pb2.ImageCreate(name=NAME), namespace="moby"), None),
        (
            envelope("/images/create", image_pb2.ImageCreate(name="sha256:" + "cd" * 32)),
            None,
        ),  # CRI's id alias
        (envelope("/content/delete", content_pb2.ContentDelete(digest="sha256:short")), None),
        (envelope("/snapshot/remove", image_pb2.ImageDelete(name=NAME)), None),
        (envelope(BARRIER_TOPIC, image_pb2.ImageCreate(name=NAME)), None),
        (
            events_pb2.Envelope(
                namespace="k8s.io", topic="/images/create", event=any_pb2.Any(value=b"\xff\xff")
            ),
            None,
        ),
    ],
    ids=[
        "create",
        "update",
        "delete",
        "content-delete",
        "other-namespace",
        "image-id",
        "bad-digest",
        "other-topic",
        "barrier",
        "garbage",
    ],
)
def test_decode(env: events_pb2.Envelope, expected: Event | None) -> None:
    assert decode(env, "k8s.io") == expected


def test_filters_name_the_namespace() -> None:
    assert subscribe_filters("k8s.io") == [
        'namespace=="k8s.io",topic~="^/images/"',
        'namespace=="k8s.io",topic=="/content/delete"',
        f'topic=="{BARRIER_TOPIC}"',
    ]


@pytest.mark.parametrize("namespace", ["", 'k8s"io', "a b", "-x", "x" * 77])
def test_namespace_is_validated(namespace: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_namespace(namespace)
