import dataclasses
import pickle

import pytest

from cnnf.model import ContainerIdentity, HostIdentity, make_labels, normalise_image
from cnnf.model.identity import split_image
from cnnf.model.records import ClusterInventory, WorkloadInfo

API = ContainerIdentity(image="shop/api:2.1", name="api-1", labels=make_labels({"app": "api"}),
                        namespace="shop-web", host="node-1")
NODE = HostIdentity(name="node-1", labels=make_labels({"zone": "a"}), addresses=("10.0.0.1",))


@pytest.mark.parametrize("ident", [API, NODE])
def test_identities_pickle_and_hash_like_their_fields(ident: object) -> None:
    # Workers receive identities pickled; the cached hash must be rebuilt there.
    copy = pickle.loads(pickle.dumps(ident))
    assert copy == ident and hash(copy) == hash(ident)
    assert {ident: 1}[copy] == 1


def test_a_changed_identity_hashes_differently_and_is_not_equal() -> None:
    other = dataclasses.replace(API, namespace="shop-data")
    assert other != API and hash(other) != hash(API)
    assert dataclasses.replace(API) == API and hash(dataclasses.replace(API)) == hash(API)
    assert "_hash" not in repr(API)


@pytest.mark.parametrize(
    ("image", "name", "tag"),
    [("shop/api:2.1", "shop/api", "2.1"), ("shop/api", "shop/api", "latest"),
     ("reg:5000/app", "reg:5000/app", "latest"), ("app@sha256:ab", "app", "sha256:ab")],
)
def test_split_image(image: str, name: str, tag: str) -> None:
    assert split_image(image) == (name, tag)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("docker.io/shop/db:13", "shop/db:13"),
        ("docker.io/shop/api:2.1", "shop/api:2.1"),
        ("docker.io/library/redis:7", "redis:7"),
        ("docker.io/library/redis", "redis"),
        ("localhost/shop/api:2.1", "shop/api:2.1"),
        ("localhost/shop/db:13", "shop/db:13"),
        ("docker.io/shop/db@sha256:ab", "shop/db@sha256:ab"),
        ("quay.io/x/y:1", "quay.io/x/y:1"),
        ("registry.example:5000/team/app:1", "registry.example:5000/team/app:1"),
        ("localhost:5000/shop/db:13", "localhost:5000/shop/db:13"),  # a registry, not implicit
        ("index.docker.io/shop/db:13", "index.docker.io/shop/db:13"),
        ("shop/db", "shop/db"),
        ("shop/db:13", "shop/db:13"),
        ("redis", "redis"),
        ("docker.io/", "docker.io/"),  # nothing after the prefix: left alone
        ("docker.io/localhost/x:1", "x:1"),  # every prefix goes: normalising is idempotent
        ("", ""),
    ],
)
def test_normalise_image(raw: str, expected: str) -> None:
    assert normalise_image(raw) == expected
    assert normalise_image(expected) == expected


def test_workload_records_carry_normalised_images() -> None:
    """Inventory reports and cluster inventories (from a Defender, the Console or
    a --cluster-inventory file) name images as discovery does."""
    w = WorkloadInfo.model_validate({"address": "10.2.0.5", "image": "docker.io/shop/db:13"})
    assert w.image == "shop/db:13"
    inv = ClusterInventory.model_validate_json(
        '{"revision": 1, "containers": [{"address": "10.2.0.6",'
        ' "image": "localhost/shop/api:2.1"}]}')
    assert inv.containers[0].image == "shop/api:2.1"
    assert WorkloadInfo(address="10.2.0.7", image="docker.io/library/redis:7").image == "redis:7"
