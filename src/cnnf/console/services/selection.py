"""Which known workloads a container or host selector selects: the object
editor's preview, as it is typed. The workloads are the cluster inventory
(what the live Defenders report running now); the matching is the policy
engine's own (``ContainerMatch``, ``HostMatch``), so the preview is what a
rule over the object would select."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from cnnf.model import ContainerSelector, HostIdentity, HostSelector
from cnnf.model.identity import make_labels
from cnnf.model.records import ClusterInventory
from cnnf.model.rule import PolicyModel
from cnnf.policy.match import ContainerMatch, HostMatch

# Matches listed in one answer (``total`` counts them all).
MAX_LISTED = 100


class ContainerSelection(PolicyModel):
    """``POST /objects/preview`` for a container object's selector."""

    kind: Literal["container"]
    selector: ContainerSelector


class HostSelection(PolicyModel):
    """``POST /objects/preview`` for a host object's selector."""

    kind: Literal["host"]
    selector: HostSelector


Selection = Annotated[ContainerSelection | HostSelection, Field(discriminator="kind")]


class SelectedWorkload(PolicyModel):
    kind: Literal["container", "host"]
    name: str
    image: str = ""
    namespace: str = ""
    pod: str = ""
    host: str = ""
    address: str = ""  # a container's; a host's first


class SelectionPreview(PolicyModel):
    """The known workloads the selector selects (at most ``MAX_LISTED``, in name
    order), how many it selects, and how many were known."""

    matches: list[SelectedWorkload]
    total: int
    known: int


def preview(selection: ContainerSelection | HostSelection,
            inventory: ClusterInventory) -> SelectionPreview:
    matches: list[SelectedWorkload] = []
    if isinstance(selection, ContainerSelection):
        match = ContainerMatch(selection.selector)
        known = len(inventory.containers)
        for c in inventory.containers:
            if match(c.identity()):
                matches.append(SelectedWorkload(kind="container", name=c.name, image=c.image,
                                                namespace=c.namespace, pod=c.pod, host=c.host,
                                                address=c.address))
    else:
        hmatch = HostMatch(selection.selector)
        known = len(inventory.hosts)
        for h in inventory.hosts:
            if hmatch(HostIdentity(name=h.name, labels=make_labels(h.labels))):
                matches.append(SelectedWorkload(kind="host", name=h.name, host=h.name,
                                                address=h.addresses[0] if h.addresses else ""))
    matches.sort(key=lambda m: (m.namespace, m.name, m.address))
    return SelectionPreview(matches=matches[:MAX_LISTED], total=len(matches), known=known)
