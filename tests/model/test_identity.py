import dataclasses
import pickle

import pytest

from cnnf.model import ContainerIdentity, HostIdentity, make_labels
from cnnf.model.identity import split_image

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
