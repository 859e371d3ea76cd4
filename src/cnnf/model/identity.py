"""Who is at an end of a connection: a container or a host."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Labels are a sorted tuple of (key, value) pairs so identities stay hashable
# (the engine caches verdicts keyed by identity).
Labels = tuple[tuple[str, str], ...]

K8S_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
K8S_POD_LABEL = "io.kubernetes.pod.name"
K8S_CONTAINER_LABEL = "io.kubernetes.container.name"


def make_labels(labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> Labels:
    """Normalise a mapping or pairs into the sorted tuple form used by identities."""
    if labels is None:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((str(k), str(v)) for k, v in items))


def split_image(image: str) -> tuple[str, str]:
    """Split ``repo/name:tag`` (or ``name@sha256:...``) into name and tag.

    A colon inside a registry host (``reg:5000/app``) is not a tag separator.
    An image without a tag has tag ``latest``, as container engines assume.
    """
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


# Prefixes engines add to short names: "shop/api" is stored as
# "docker.io/shop/api" (Docker, Podman) or "localhost/shop/api" (podman import),
# and "redis" as "docker.io/library/redis". Longest first.
IMPLICIT_IMAGE_PREFIXES = ("docker.io/library/", "docker.io/", "localhost/")


def implicit_image_prefix(image: str) -> str:
    """The implicit prefix ``image`` starts with ("" if none, or if nothing follows it)."""
    for prefix in IMPLICIT_IMAGE_PREFIXES:
        if image.startswith(prefix) and len(image) > len(prefix):
            return prefix
    return ""


def normalise_image(image: str) -> str:
    """The image name as users write it in rules, without implicit prefixes.

    Every container identity that enters CNNF (discovery, inventory reports,
    cluster inventories) goes through this, so ``docker.io/shop/db:13`` and
    ``shop/db:13`` are one identity. Idempotent: prefixes are removed until
    none is left, so normalising twice (discovery, then the inventory record)
    gives the same name as once."""
    while prefix := implicit_image_prefix(image):
        image = image[len(prefix):]
    return image


@dataclass(frozen=True, slots=True)
class ContainerIdentity:
    """A running container as a Defender sees it, or a Kubernetes pod (its
    containers share one network namespace, so one identity stands for them).

    ``image`` is the workload's main image; ``images`` lists every image of a
    pod with more than one container (main image first), and is empty for a
    single image. Image selectors match when any of ``all_images`` matches."""

    image: str
    name: str = ""
    labels: Labels = ()
    namespace: str = ""
    cluster: str = ""
    host: str = ""
    id: str = ""
    pod: str = ""
    images: tuple[str, ...] = ()
    # Identities are long-lived (the inventory holds them) and hashed for every
    # cached verdict lookup: hash once. Not pickled: string hashes differ
    # between processes, so __reduce__ rebuilds from the fields.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.images:  # the main image first, once; one image: the plain form
            images = tuple(dict.fromkeys((self.image, *self.images)))
            object.__setattr__(self, "images", images if len(images) > 1 else ())
        object.__setattr__(self, "_hash", hash((self.image, self.name, self.labels,
                                                self.namespace, self.cluster, self.host,
                                                self.id, self.pod, self.images)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, (type(self), _init_values(self))

    @property
    def all_images(self) -> tuple[str, ...]:
        """Every image of the workload, the main one first."""
        return self.images or (self.image,)

    @property
    def image_name(self) -> str:
        return split_image(self.image)[0]

    @property
    def image_tag(self) -> str:
        return split_image(self.image)[1]

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """A host (a node) running a Defender, or a workload on the host network."""

    name: str
    labels: Labels = ()
    addresses: tuple[str, ...] = ()
    cluster: str = ""
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash",
                           hash((self.name, self.labels, self.addresses, self.cluster)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, (type(self), _init_values(self))


def _init_values(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in fields(obj) if f.init)


def _rebuild(cls: Any, values: tuple[Any, ...]) -> Any:
    return cls(*values)
