"""The Defender: the firewall that runs on each host.

- ``datapath/``: kernel-facing enforcement and observation (iptables + ipset
  rules steering SYNs to NFQUEUE, the verdict workers, DNS answers, conntrack
  events, queue statistics); see :mod:`cnnf.defender.datapath`.
- ``discovery/``: the workloads on this host (Docker Engine API).
- the agent core: decisions, flows and audits from the compiled policy.
"""
