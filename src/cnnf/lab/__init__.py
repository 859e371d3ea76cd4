"""The lab: hosts as network namespaces with real Podman containers, on one machine.

``Lab.up(topology)`` builds it, ``Lab.open(name)`` attaches to a running one,
``Lab.down(name)`` removes everything; ``Traffic`` runs the topology's traffic
patterns from inside the containers.
"""

from cnnf.lab.lab import ConnectResult, ContainerInfo, Lab, running_labs
from cnnf.lab.system import LabError
from cnnf.lab.topology import Topology, TopologyError, load_topology, parse_topology
from cnnf.lab.traffic import Traffic

__all__ = [
    "ConnectResult",
    "ContainerInfo",
    "Lab",
    "LabError",
    "Topology",
    "TopologyError",
    "Traffic",
    "load_topology",
    "parse_topology",
    "running_labs",
]
