"""``cnnf defender``: run the Defender, show its status, clean up after a crash."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import typer

from cnnf.errors import CnnfError

app = typer.Typer(help="The Defender: the firewall that runs on each host.",
                  no_args_is_help=True)


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(  # noqa: PLR0917
    policy: str = typer.Option(None, "--policy", help="Standalone: policy document "
                                "(YAML/JSON), reloaded when the file changes (a document "
                                "without a revision gets the load count as its revision)."),
    console: str = typer.Option(None, "--console", help=(
                                "Managed: the Console URL (several replicas: URL,URL,...; "
                                "the Defender moves to the next when one is unreachable).")),
    token: str = typer.Option(None, "--token", envvar="CNNF_ENROLLMENT_TOKEN",
                              help="Enrollment token (first start of a managed Defender)."),
    ca: str = typer.Option(None, "--ca", help="CA bundle to verify the Console with."),
    state_dir: str = typer.Option(None, "--state-dir", help="State (credential, saved policy, "
                                   "spool, status) (default: /var/lib/cnnf/defender, or "
                                   "/var/lib/cnnf/defender/netns-NAME with --netns)."),
    runtime: str = typer.Option("auto", "--runtime", help="Where workloads are discovered: "
                                "cri (Kubernetes nodes: containerd, CRI-O), docker (the "
                                "Docker Engine API: Docker, Podman), or auto: the first "
                                "that answers of containerd's CRI socket, CRI-O's, Docker's, "
                                "Podman's."),
    cri_socket: str = typer.Option(None, "--cri-socket", help="The CRI socket (default: "
                                   "/run/containerd/containerd.sock, else "
                                   "/run/crio/crio.sock)."),
    docker_host: str = typer.Option(None, "--docker-host", help="Docker Engine API URL "
                                    "(default: $DOCKER_HOST, the Docker socket, Podman's)."),
    container_net: list[str] = typer.Option([], "--container-net", help="CIDR of this "  # noqa: B008
                                            "host's containers or pods whose new addresses "
                                            "are queued before discovery names them, beside "
                                            "the bridges' networks (for a CNI without a "
                                            "bridge; repeat)."),
    hostname: str = typer.Option(None, "--hostname", help="This host's name (default: "
                                 "the system's)."),
    label: list[str] = typer.Option([], "--label", help="Host label KEY=VALUE (repeat)."),  # noqa: B008
    cluster: str = typer.Option("", "--cluster", help="Cluster name of this host."),
    netns: str = typer.Option(None, "--netns", help="Run the datapath in this network "
                              "namespace (a name under /run/netns or a path)."),
    block_mode: str = typer.Option(None, "--block-mode", help="reset|drop: how prevented "
                                   "connections are refused (overrides the policy)."),
    fail_closed: bool = typer.Option(False, "--fail-closed", help="With no verdict process "
                                     "(the Defender dead, restarting or stopped), refuse new "
                                     "connections of protected workloads with a TCP reset "
                                     "(needs nftables; without it they are dropped); a "
                                     "stop leaves the rules refusing until the next start or "
                                     "`cnnf defender cleanup` (default: fail open, as if "
                                     "there were no firewall). An overloaded Defender drops "
                                     "in both modes."),
    admission_rate: int = typer.Option(1000, "--admission-rate", help="SYNs per second and "
                                       "source address that the kernel's cache does not answer "
                                       "(first-seen triples, alerts) let into the verdict "
                                       "queue; above it they are dropped in the kernel and "
                                       "counted (burst: twice the rate, at most 10,000; 0: "
                                       "no limit)."),
    fastpath: bool = typer.Option(True, "--fastpath/--no-fastpath", help="Keep decided "
                                  "allow and prevent verdicts per (source, destination, "
                                  "port) in the kernel, so repeats skip the verdict loop "
                                  "(alerts always reach it)."),
    fastpath_ttl: float = typer.Option(60.0, "--fastpath-ttl", help="Seconds a cached "
                                       "verdict lives before the next SYN is decided again."),
    queues: int = typer.Option(1, "--queues", help="NFQUEUE queues (one worker process each)."),
    queue_num: int = typer.Option(4200, "--queue-num", help="First queue number."),
    output: str = typer.Option(None, "--output", help="Flows and audits as JSON lines: a "
                               "file (appended) or - for stdout."),
    metrics: str = typer.Option(None, "--metrics", help="Serve Prometheus metrics on "
                                "HOST:PORT."),
    repair_interval: float = typer.Option(5.0, "--repair-interval", help="Seconds between "
                                          "checks that put back deleted rules and sets."),
    audit_window: float = typer.Option(5.0, "--audit-window", help="Seconds repeats of an "
                                       "audit are folded into one (with a count)."),
    cluster_inventory: str = typer.Option(None, "--cluster-inventory", help="Standalone: a "
                                           "ClusterInventory JSON file naming the other hosts' "
                                           "workloads (watched for changes)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Run the Defender until SIGTERM/SIGINT, which remove its kernel state.

    With --fail-closed the rules stay and refuse until the next start or
    `cnnf defender cleanup`.
    """
    from cnnf.defender.agent import Agent
    from cnnf.defender.config import (
        ConfigError,
        DefenderConfig,
        default_state_dir,
        parse_labels,
        parse_listen,
    )

    _configure_logging(log_level)
    if os.geteuid() != 0:
        raise _fail("the Defender needs root (iptables, ipset, NFQUEUE)")
    try:
        kw: dict[str, Any] = {}
        if hostname:
            kw["hostname"] = hostname
        config = DefenderConfig(
            policy_file=Path(policy) if policy else None, console=console, token=token,
            ca=Path(ca) if ca else None,
            state_dir=Path(state_dir) if state_dir else default_state_dir(netns),
            docker_host=docker_host, runtime=runtime, cri_socket=cri_socket,
            container_nets=tuple(container_net),
            host_labels=parse_labels(label), cluster=cluster, netns=netns,
            block_mode=block_mode,  # type: ignore[arg-type]
            fail_closed=fail_closed, queues=queues, queue_num=queue_num, output=output,
            metrics=parse_listen(metrics) if metrics else None,
            repair_interval=repair_interval, audit_window=audit_window,
            admission_rate=admission_rate, fastpath=fastpath, fastpath_ttl=fastpath_ttl,
            cluster_inventory=Path(cluster_inventory) if cluster_inventory else None, **kw,
        )
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    agent = Agent(config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    except CnnfError as exc:
        raise _fail(str(exc), 1) from None


def _read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(int(data["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        data["stale"] = True
    return data


@app.command()
def status(
    netns: str = typer.Option(None, "--netns", help="The Defender's network namespace (also "
                              "picks the default state dir /var/lib/cnnf/defender/netns-NAME: "
                              "give --state-dir if the Defender was started with one)."),
    state_dir: str = typer.Option(None, "--state-dir", help="The Defender's state dir."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Protected workloads, verdicts, fast path, admission limit, engine and queues."""
    from dataclasses import asdict

    from cnnf.defender.config import default_state_dir
    from cnnf.defender.datapath import queue_stats

    data = _read_status(Path(state_dir) if state_dir else default_state_dir(netns))
    # The queues of the Defender's namespace: the status file names it when only
    # --state-dir was given (else the root namespace's queues were shown).
    queues = [asdict(q) for q in queue_stats(netns or (data or {}).get("netns") or None)]
    if as_json:
        typer.echo(json.dumps({"defender": data, "kernel_queues": queues}, indent=2))
        return
    if data is None:
        typer.echo("defender: not running (no status file)")
    else:
        state = "not running (stale status file)" if data.get("stale") else "running"
        age = time.time() - float(data.get("updated", 0))
        mode = data["mode"]
        typer.echo(f"defender: {state}, pid {data['pid']}, host {data['hostname']}"
                   + (f", netns {data['netns']}" if data.get("netns") else "")
                   + f" (status {age:.0f}s old)")
        typer.echo(f"policy: revision {data['policy_revision']}, containers "
                   f"{'enabled' if mode['container'] else 'disabled'}, hosts "
                   f"{'enabled' if mode['host'] else 'disabled'}, block mode "
                   f"{data['block_mode']}, fail-{'open' if data['fail_open'] else 'closed'}")
        typer.echo(f"protected workloads ({len(data['protected'])}):")
        for p in data["protected"]:
            images = ", ".join(p.get("images") or [p["image"]])
            if p.get("pod"):  # a Kubernetes pod: namespace/name, main container, images
                typer.echo(f"  {p['address']:<16} pod       {p['pod']} ({p['name']}) {images}")
            else:
                typer.echo(f"  {p['address']:<16} {p['kind']:<9} {p['name']:<16} {images}")
        if data.get("container_networks") and mode["container"]:
            typer.echo(f"container networks queued before containers are named: "
                       f"{', '.join(data['container_networks'])} "
                       f"({data.get('unidentified_dropped', 0)} SYNs of unnamed ones dropped)")
        c = data["counters"]
        typer.echo("verdicts: " + ", ".join(
            f"{'dropped undecided (overload)' if k == 'shed' else k} {v}" for k, v in c.items()))
        fp = data.get("fastpath")
        if fp:
            typer.echo(f"fast path: {fp['entries']} cached verdict(s) (ttl {fp['ttl']:g} s); "
                       "repeats answered in the kernel: "
                       + ", ".join(f"{k} {v}" for k, v in fp["hits"].items()))
        adm = data.get("admission") or {}
        if adm.get("rate") or adm.get("dropped"):
            top = ", ".join(f"{t['name']} ({t['address']}) {t['dropped']}" if t["name"]
                            else f"{t['address']} {t['dropped']}" for t in adm["top"])
            by_loop = adm.get("by_verdict_loop") or 0
            tightened = adm.get("tightened") or []
            limit = (f"{adm['rate']} new connections/s per source" if adm.get("rate")
                     else "off (--admission-rate 0)")
            typer.echo(f"admission: {limit}; {adm['dropped']} SYNs dropped as overload"
                       + (f" ({by_loop} of them by the verdict loop: it could not keep up "
                          "with their source)" if by_loop else "")
                       + (" (overloaded now)" if adm["overload"] else "")
                       + (f"; tightened to {adm.get('tightened_rate')}/s now for: "
                          + ", ".join(tightened) if tightened else "")
                       + (f"; top sources: {top}" if top else ""))
        spoof = data.get("anti_spoofing") or {}
        if spoof:
            unbound = spoof.get("unbound") or []
            typer.echo(f"anti-spoofing: {spoof['ports']} container port(s) bound to their "
                       f"addresses; {spoof['dropped']} packets with a forged source address "
                       "dropped" + (f"; NOT checked (no port found): {', '.join(unbound)}"
                                    if unbound else ""))
        obs = data.get("observation") or {}
        if obs.get("running"):
            top = ", ".join(f"{t['name']} ({t['address']}) {t['dropped']}" if t["name"]
                            else f"{t['address']} {t['dropped']}" for t in obs.get("top") or ())
            typer.echo(f"observation (conntrack, enforcement off for a kind): "
                       f"{obs['waiting']} connection(s) waiting to be recorded, "
                       f"{obs['dropped']} dropped unrecorded (more than it keeps up with)"
                       + (f"; top sources: {top}" if top else "")
                       + (f"; {obs['overruns']} kernel overrun(s)" if obs.get("overruns") else "")
                       + (f"; restarted {obs['restarts']} time(s)" if obs.get("restarts") else "")
                       + (f"; {obs['unparsed']} line(s) of conntrack output not understood"
                          if obs.get("unparsed") else ""))
        gap = data["start_to_protected_ms"]
        if gap["count"]:
            typer.echo(f"start to protected: last {gap['last']} ms, max {gap['max']} ms "
                       f"({gap['count']} containers)")
        engine = data.get("engine")
        where = (f" ({engine['runtime']} {engine['endpoint']})"
                 if engine and engine.get("runtime") else "")
        if engine and engine["since"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(engine["since"]))
            typer.echo(f"container engine{where}: {'up' if engine['up'] else 'UNREACHABLE'} "
                       f"since {since} ({engine['outages']} outage(s))")
        elif engine:
            typer.echo(f"container engine{where}: not reached yet")
        if data.get("console"):
            con = data["console"]
            typer.echo(f"console: {con['url']} "
                       f"({'connected' if con['connected'] else 'unreachable'}), "
                       f"{con['spool_batches']} report batch(es) spooled")
    typer.echo("kernel queues (/proc/net/netfilter/nfnetlink_queue):")
    if not queues:
        typer.echo("  none bound")
    for q in queues:
        typer.echo(f"  queue {q['queue']}: waiting {q['waiting']}, queued {q['id_sequence']}, "
                   f"kernel dropped {q['dropped']}, user dropped {q['user_dropped']}")


@app.command()
def cleanup(
    netns: str = typer.Option(None, "--netns", help="The network namespace to clean."),
    state_dir: str = typer.Option(None, "--state-dir", help="The Defender's state dir (its "
                                  "stale status file is removed)."),
) -> None:
    """Remove every CNNF rule, chain, set and nftables table.

    After a fail-closed stop, or a crash (a new start replaces those itself).
    """
    from cnnf.defender.config import default_state_dir
    from cnnf.defender.datapath import DatapathError
    from cnnf.defender.datapath import cleanup as datapath_cleanup

    if os.geteuid() != 0:
        raise _fail("cleanup needs root")
    try:
        removed = datapath_cleanup(netns)
    except DatapathError as exc:
        raise _fail(str(exc), 1) from None
    for item in removed:
        typer.echo(f"removed {item}")
    status_dir = Path(state_dir) if state_dir else default_state_dir(netns)
    data = _read_status(status_dir)
    if data is not None and data.get("stale"):
        (status_dir / "status.json").unlink(missing_ok=True)
        (status_dir / "inventory.json").unlink(missing_ok=True)
        typer.echo(f"removed the stale status file of pid {data.get('pid')}")
    typer.echo(f"cleanup done: {len(removed)} item(s) removed")
