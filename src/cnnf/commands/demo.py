"""``cnnf demo``: run the whole product on this machine (``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnf.demo import DEFAULT_DATA_DIR, DEFAULT_LAB, DEFAULT_LISTEN, Demo, DemoConfig, cleanup
from cnnf.errors import CnnfError
from cnnf.lab import LabError

app = typer.Typer(
    name="demo",
    help="Run the demo: Console, a lab (shop: Podman hosts; --topology kube: "
         "Kubernetes-like nodes, containerd and pods), one Defender per lab host, a starter "
         "policy and traffic with lateral-movement attempts. Ctrl-C (SIGINT) or SIGTERM "
         "removes everything.",
    add_completion=False,
)

DATA_HELP = "Directory for the demo's Console store, Defender state and logs"


@app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    *,
    listen: Annotated[str, typer.Option(
        "--listen", help="HOST:PORT the Console (and Radar) listens on")] = DEFAULT_LISTEN,
    data_dir: Annotated[Path, typer.Option("--data-dir", help=DATA_HELP)] = DEFAULT_DATA_DIR,
    name: Annotated[str, typer.Option("--name", help="Lab name")] = DEFAULT_LAB,
    topology: Annotated[str, typer.Option(
        "--topology", help="The lab: shop (Podman hosts) or kube (Kubernetes-like nodes: "
        "containerd, pods through the CRI)")] = "shop",
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Starter policy (default: examples/demo-policy.yaml, "
        "examples/demo-kube-policy.yaml on kube)")] = None,
    password: Annotated[str | None, typer.Option(
        "--password", envvar="CNNF_DEMO_PASSWORD",
        help="The admin's password (default: a new random one, printed)")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Stop after this many seconds (default: run until Ctrl-C)")] = None,
    every: Annotated[float, typer.Option(
        "--every", help="Seconds between progress lines while running")] = 30.0,
) -> None:
    """Start the demo and keep it running until Ctrl-C (SIGINT) or SIGTERM."""
    ctx.obj = {"data_dir": data_dir, "name": name}
    if ctx.invoked_subcommand is not None:
        return
    config = DemoConfig(listen=listen, data_dir=data_dir, lab=name, policy=policy,
                        topology=topology, password=password, duration=duration, every=every)
    try:
        config.profile  # noqa: B018 - a bad --topology fails before anything starts
        Demo(config, out=typer.echo).run()
    except (CnnfError, LabError, OSError) as exc:
        typer.echo(f"cnnf demo: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("cleanup")
def cleanup_command(ctx: typer.Context) -> None:
    """Remove what a crashed demo left behind (processes, kernel state, lab, store)."""
    parent = ctx.obj or {}
    try:
        removed = cleanup(parent.get("data_dir", DEFAULT_DATA_DIR), parent.get("name", DEFAULT_LAB),
                          out=typer.echo)
    except (CnnfError, LabError, OSError) as exc:
        typer.echo(f"cnnf demo cleanup: {exc}", err=True)
        raise typer.Exit(1) from None
    if not removed:
        typer.echo("nothing to clean up")
