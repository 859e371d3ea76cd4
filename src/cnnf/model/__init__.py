"""Pure data: identities, network objects, rules, policy, attempts and verdicts.

Nothing here touches a socket, a file or a clock. Policy types are pydantic
models (validated once, at the edge); hot-path types (identities, attempts,
verdicts) are small frozen dataclasses.
"""

from cnnf.model.attempt import ConnectionAttempt, Endpoint, Verdict
from cnnf.model.identity import (
    ContainerIdentity,
    HostIdentity,
    Labels,
    make_labels,
    normalise_image,
)
from cnnf.model.objects import (
    ContainerObject,
    ContainerSelector,
    DnsObject,
    HostObject,
    HostSelector,
    NetworkObject,
    ObjectKind,
    SubnetObject,
)
from cnnf.model.policy import BlockMode, Policy
from cnnf.model.rule import ANY_PORT, Effect, PortRange, Rule, RuleKind

__all__ = [
    "ANY_PORT",
    "BlockMode",
    "ConnectionAttempt",
    "ContainerIdentity",
    "ContainerObject",
    "ContainerSelector",
    "DnsObject",
    "Effect",
    "Endpoint",
    "HostIdentity",
    "HostObject",
    "HostSelector",
    "Labels",
    "NetworkObject",
    "ObjectKind",
    "Policy",
    "PortRange",
    "Rule",
    "RuleKind",
    "SubnetObject",
    "Verdict",
    "make_labels",
    "normalise_image",
]
