"""CNNF: a Cloud Native Network Firewall for containers and hosts."""

__version__ = "0.1.0"
