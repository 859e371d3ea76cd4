"""``cnnf lab``: bring the lab up and down, look at it, act inside it."""

from __future__ import annotations

import json
import time

import typer

from cnnf.errors import CnnfError
from cnnf.lab import Lab, Traffic, running_labs
from cnnf.lab.topology import load_topology

app = typer.Typer(
    name="lab",
    help="A multi-host test bed: network namespaces with real Podman containers "
    "or containerd pods.",
    no_args_is_help=True,
)

NAME = typer.Option("shop", "--name", "-n", help="Name of the lab.")


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@app.command()
def up(
    topology: str = typer.Argument("shop", help="A topology YAML file or a shipped topology name."),
    name: str = typer.Option(None, "--name", "-n", help="Lab name (default: the topology's)."),
) -> None:
    """Create the lab (removing leftovers of an earlier run of the same name first)."""
    try:
        lab = Lab.up(topology, name=name, progress=typer.echo)
    except CnnfError as exc:
        raise _fail(exc) from None
    podman = [h for h in lab.plan.hosts if lab.runtime(h) == "podman"]
    nodes = [h for h in lab.plan.hosts if lab.runtime(h) == "containerd"]
    if podman:
        typer.echo("docker hosts: " + ", ".join(f"{h}={lab.docker_host(h)}" for h in podman))
    if nodes:
        typer.echo("cri sockets: " + ", ".join(f"{h}={lab.cri_socket(h)}" for h in nodes))


@app.command()
def down(name: str = NAME) -> None:
    """Remove everything the lab created (safe to repeat)."""
    t0 = time.monotonic()
    try:
        removed = Lab.down(name, progress=lambda _: None)
    except CnnfError as exc:
        raise _fail(exc) from None
    what = "; ".join(removed) if removed else "nothing to remove"
    typer.echo(f"lab {name!r} is down ({what}) in {time.monotonic() - t0:.1f} s")


@app.command()
def status(
    name: str = NAME,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Hosts, addresses, containers (pods) and Docker API (CRI) sockets of the lab."""
    try:
        st = Lab.open(name).status()
    except CnnfError as exc:
        others = ", ".join(running_labs()) or "none"
        typer.echo(f"error: {exc} (labs up: {others})", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    typer.echo(
        f"lab {st['lab']} ({st['status']}, since {st['started']}): "
        f"underlay {st['underlay']}, router {st['router']['address']}, "
        f"DNS {st['dnsServer'] or '-'}"
    )
    for h in st["hosts"]:
        labels = ",".join(f"{k}={v}" for k, v in h["labels"].items())
        if "criSocket" in h:  # a containerd host
            typer.echo(f"host {h['name']}  {h['address']}  pods {h['subnet']}  [{labels}]")
            typer.echo(f"  cri: {h['criSocket']}")
        else:
            typer.echo(f"host {h['name']}  {h['address']}  containers {h['subnet']}  [{labels}]")
            typer.echo(f"  docker: {h['dockerHost']}")
        for c in h["containers"]:
            shown = {
                k: v for k, v in c.get("labels", {}).items() if not k.startswith("io.kubernetes.")
            }
            ns = c.get("labels", {}).get("io.kubernetes.pod.namespace", "")
            pod = f"pod={c['pod']} " if c.get("pod") else ""
            typer.echo(
                f"  {c.get('name', '?'):<10} {c.get('address', ''):<13} {c['state']:<8} "
                f"{c.get('image', ''):<28} {pod}ns={ns} "
                + ",".join(f"{k}={v}" for k, v in shown.items())
            )
    for s in st["external"]:
        typer.echo(f"external {s['server']}  {s['address']}  ports {','.join(map(str, s['ports']))}"
                   + (f"  dns {','.join(s['dns'])}" if s["dns"] else ""))  # fmt: skip


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec(
    ctx: typer.Context,
    container: str = typer.Argument(..., help="Container name (or pod name)."),
    name: str = NAME,
) -> None:
    """Run a command inside a container: cnnf lab exec CONTAINER -- CMD..."""
    cmd = list(ctx.args)
    if not cmd:
        raise _fail(ValueError("give the command after --, e.g. cnnf lab exec api -- ps"))
    try:
        proc = Lab.open(name).exec(container, cmd, capture=False)
    except CnnfError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code=proc.returncode)


@app.command()
def connect(
    source: str = typer.Argument(..., help="Container (or pod) to connect from."),
    destination: str = typer.Argument(
        ..., help="Container, pod, host, server, address or DNS name."
    ),
    port: int = typer.Argument(..., help="TCP port."),
    timeout: float = typer.Option(2.0, "--timeout", "-t", help="Seconds to wait."),
    name: str = NAME,
) -> None:
    """One real TCP connect from inside container SOURCE."""
    try:
        result = Lab.open(name).connect(source, destination, port, timeout=timeout)
    except CnnfError as exc:
        raise _fail(exc) from None
    typer.echo(str(result))
    raise typer.Exit(code=0 if result.ok else 1)


@app.command()
def traffic(
    duration: float = typer.Option(
        None, "--duration", "-d", help="Seconds to run (default: until Ctrl-C)."
    ),
    every: float = typer.Option(2.0, "--every", help="Seconds between summaries."),
    name: str = NAME,
) -> None:
    """Run the topology's traffic patterns from inside the containers; print a running summary."""
    try:
        t = Traffic(Lab.open(name))
    except CnnfError as exc:
        raise _fail(exc) from None
    t0 = time.monotonic()

    def report(tr: Traffic) -> None:
        typer.echo(f"--- {time.monotonic() - t0:.0f} s\n{tr.summary()}")

    try:
        t.run(duration, every=every, report=report)
    except KeyboardInterrupt:
        t.stop()
        typer.echo("stopped")
    except CnnfError as exc:
        raise _fail(exc) from None
    typer.echo(f"=== total after {time.monotonic() - t0:.0f} s\n{t.summary()}")


@app.command("topologies")
def topologies() -> None:
    """List the shipped topologies."""
    from cnnf.lab.topology import shipped_topologies

    for n in shipped_topologies():
        typer.echo(f"{n}: {load_topology(n).description}")
