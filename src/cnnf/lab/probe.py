"""Connect helper run INSIDE a container's network namespace.

The lab starts it as ``nsenter --net=/proc/<pid>/ns/net python probe.py ...``,
so its packets leave from the container's own address exactly as the
container's would. It is run as a script (not imported from the package) and
needs only the standard library, plus dnspython to resolve names through the
lab DNS server. Every result is one JSON line on stdout.

  probe.py connect HOST PORT [--timeout S] [--dns SERVER]
  probe.py resolve NAME --dns SERVER
  probe.py listen PORT [--timeout S]      accept one connection, print the peer
  probe.py loop                           patterns as JSON on stdin's first line;
                                          runs until stdin closes
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import sys
import threading
import time
from typing import Any

_print_lock = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def resolve(name: str, server: str | None, timeout: float) -> list[str]:
    try:
        ipaddress.IPv4Address(name)
        return [name]
    except ValueError:
        pass
    if not server:
        raise LookupError(f"no lab DNS server to resolve {name}")
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.lifetime = timeout
    try:
        answer = resolver.resolve(name, "A")
    except (dns.exception.DNSException, OSError) as exc:
        raise LookupError(f"cannot resolve {name}: {exc}") from None
    return [r.address for r in answer]


def connect(host: str, port: int, timeout: float, dns: str | None) -> dict[str, Any]:
    start = time.monotonic()
    result: dict[str, Any] = {"destination": host, "port": port}
    try:
        address = resolve(host, dns, timeout)[0]
    except LookupError as exc:
        result.update(outcome="dns-error", error=str(exc))
        result["ms"] = round((time.monotonic() - start) * 1000, 2)
        return result
    result["address"] = address
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        sock.connect((address, port))
        result["outcome"] = "connected"
        result["source"] = sock.getsockname()[0]
    except TimeoutError:
        result["outcome"] = "timeout"
    except OSError as exc:
        code = exc.errno
        if code == errno.ECONNREFUSED:
            result["outcome"] = "refused"
        elif code == errno.ECONNRESET:
            result["outcome"] = "reset"
        elif code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            result["outcome"] = "unreachable"
        else:
            result["outcome"] = "error"
        result["error"] = exc.strerror or str(exc)
    finally:
        sock.close()
    result["ms"] = round((time.monotonic() - t0) * 1000, 2)
    return result


def listen(port: int, timeout: float) -> dict[str, Any]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    _emit({"listening": port})
    srv.settimeout(timeout)
    try:
        conn, peer = srv.accept()
    except TimeoutError:
        return {"outcome": "timeout"}
    conn.close()
    srv.close()
    return {"outcome": "accepted", "peer": peer[0], "peerPort": peer[1]}


def _pattern_loop(p: dict[str, Any], dns: str | None, stop: threading.Event) -> None:
    interval = 1.0 / float(p["rate"])
    next_at = time.monotonic()
    while not stop.is_set():
        r = connect(p["destination"], int(p["port"]), float(p.get("timeout", 1.0)), dns)
        r["id"] = p["id"]
        _emit(r)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay < 0:  # fell behind (timeouts): do not burst to catch up
            next_at = time.monotonic()
            delay = 0
        if stop.wait(delay):
            break


def loop() -> None:
    spec = json.loads(sys.stdin.readline())
    stop = threading.Event()
    threads = [
        threading.Thread(target=_pattern_loop, args=(p, spec.get("dns"), stop), daemon=True)
        for p in spec["patterns"]
    ]
    for t in threads:
        t.start()
    sys.stdin.read()  # returns when the parent closes our stdin (or dies)
    stop.set()
    for t in threads:
        t.join(timeout=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--timeout", type=float, default=2.0)
    c.add_argument("--dns")
    r = sub.add_parser("resolve")
    r.add_argument("name")
    r.add_argument("--dns")
    r.add_argument("--timeout", type=float, default=2.0)
    ls = sub.add_parser("listen")
    ls.add_argument("port", type=int)
    ls.add_argument("--timeout", type=float, default=10.0)
    sub.add_parser("loop")
    args = parser.parse_args(argv)
    if args.cmd == "connect":
        _emit(connect(args.host, args.port, args.timeout, args.dns))
    elif args.cmd == "resolve":
        try:
            _emit({"name": args.name, "addresses": resolve(args.name, args.dns, args.timeout)})
        except LookupError as exc:
            _emit({"name": args.name, "error": str(exc)})
            return 1
    elif args.cmd == "listen":
        _emit(listen(args.port, args.timeout))
    else:
        loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
