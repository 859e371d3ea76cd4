"""Identity classes (:func:`identity_class`): what the store groups learning's
and simulating's flows by. Equal classes must read as equal identities once the
container name is left out (:func:`unnamed_endpoint`), and unequal identities
must never share one."""

from __future__ import annotations

import orjson
import pytest

from cnnf.model import ContainerIdentity, Endpoint, HostIdentity, make_labels
from cnnf.model.records import EndpointInfo
from cnnf.policy.observed import (
    EndpointCache,
    endpoint_of,
    identity_class,
    recorded_text,
    unnamed_endpoint,
)

API = [EndpointInfo(kind="container", image="shop/api:1", container=f"api-{i}", namespace="a",
                    host="n1", labels={"app": "api", "io.kubernetes.pod.name": f"api-{i}"})
       for i in range(3)]


def test_replicas_share_a_class_that_reads_as_the_workload_without_its_name() -> None:
    texts = [recorded_text(ep, address=False) for ep in API]
    assert len(set(texts)) == 3  # the names differ
    assert len({identity_class(t) for t in texts}) == 1
    assert unnamed_endpoint(texts[0], "image:shop/api:1") == Endpoint(
        container=ContainerIdentity(image="shop/api:1", namespace="a", host="n1",
                                    labels=make_labels({"app": "api"})))
    assert endpoint_of(texts[1], "image:shop/api:1").container.name == "api-1"  # type: ignore[union-attr]


@pytest.mark.parametrize("other", [
    EndpointInfo(kind="container", image="shop/api:1", container="api-0", namespace="b",
                 host="n1", labels={"app": "api"}),
    EndpointInfo(kind="container", image="shop/api:2", container="api-0", namespace="a",
                 host="n1", labels={"app": "api"}),
    EndpointInfo(kind="container", image="shop/api:1", container="api-0", namespace="a",
                 host="n1", labels={"app": "api", "tier": "x"}),
    EndpointInfo(kind="container", image="shop/api:1", container="api-0", namespace="a",
                 host="n2", labels={"app": "api"}),
    EndpointInfo(kind="container", image="shop/api:1", container="api-0", namespace="a",
                 host="n1", labels={"app": "api"}, address="10.0.0.1"),
    EndpointInfo(kind="host", host="n1"),
])
def test_what_a_selector_can_tell_apart_is_another_class(other: EndpointInfo) -> None:
    mine = recorded_text(API[0], address=False)
    theirs = recorded_text(other, address=True)
    assert identity_class(mine) != identity_class(theirs)
    assert unnamed_endpoint(mine, "k") != unnamed_endpoint(theirs, "k")


def test_the_class_does_not_depend_on_how_the_text_is_written() -> None:
    data = {"kind": "address", "address": "203.0.113.9", "domain": "x.example"}
    compact = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    spaced = '{ "domain": "x.example",  "address": "203.0.113.9", "kind": "address" }'
    assert identity_class(compact) == identity_class(spaced) != ""
    assert len(identity_class(compact)) == 32


@pytest.mark.parametrize("text", ["", "not json", '"a string"', "[1]", "12", "null"])
def test_texts_read_from_the_key_have_the_empty_class(text: str) -> None:
    assert identity_class(text) == ""
    assert unnamed_endpoint(text, "host:n1") == Endpoint(host=HostIdentity(name="n1"))
    assert unnamed_endpoint(text, "host:n1") == endpoint_of(text, "host:n1")


@pytest.mark.parametrize("text", ["not json", '"a string"', "[1]", ""])
def test_the_cache_reads_a_text_that_is_no_json_object_from_each_flows_key(text: str) -> None:
    """Such a text beside two keys is two endpoints, each its key's, as
    :func:`endpoint_of` reads them (the cache once gave every key the endpoint
    of the first it met), and a JSON text stands for itself whatever the key."""
    cache = EndpointCache()
    for key in ("image:shop/api:1", "image:shop/db:1", "image:shop/api:1"):
        assert cache(text, key) == endpoint_of(text, key)
    whole = recorded_text(API[0], address=False)
    assert cache(whole, "image:other") == cache(whole, "image:shop/api:1") == endpoint_of(
        whole, "image:shop/api:1")
