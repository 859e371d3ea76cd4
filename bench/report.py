"""Run every benchmark in bench/ and write bench/RESULTS.md (what `make bench` does).

Each benchmark is a script here that prints its figures beside a baseline
measured in the same run; this script runs them one after another (as root,
since the lab and datapath ones need it), collects what each printed, and
writes one Markdown report with the machine it ran on: CPU model, cores,
memory, kernel, OS, Python, and the commit.

    sudo .venv/bin/python bench/report.py [--only NAME ...] [--merge] [--output bench/RESULTS.md]

``--merge`` (with ``--only``) rewrites only the sections of the benchmarks it
ran and keeps the others from the existing report; every section says the run
(date and commit) it comes from.

A benchmark that fails or runs past ``--timeout`` is reported as such (with
its last lines), and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# Arguments that keep `make bench` within about ten minutes on 2 cores; the
# scripts' own defaults are the full runs (see each script's docstring).
ARGS: dict[str, list[str]] = {
    "policy_engine.py": ["--quick"],  # 100 to 10,000 rules; the full run adds 100,000
    "lab_updown.py": ["--rounds", "2"],
}
NEEDS_ROOT = {"datapath.py", "defender_lab.py", "lab_updown.py", "propagation.py",
              "start_to_named.py"}
# seconds, where --timeout's default is too short: about five minutes here
TIMEOUTS = {"defender_lab.py": 600.0}


def benchmarks(only: list[str] | None = None) -> list[Path]:
    scripts = sorted(p for p in BENCH.glob("*.py")
                     if p.name != Path(__file__).name and not p.name.startswith("_"))
    if only:
        wanted = {n if n.endswith(".py") else f"{n}.py" for n in only}
        unknown = wanted - {p.name for p in scripts}
        if unknown:
            raise SystemExit(f"report.py: no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [p for p in scripts if p.name in wanted]
    return scripts


def summary(script: Path) -> str:
    """The first paragraph of the script's docstring, on one line."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    except SyntaxError:
        doc = ""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split()).replace("``", "`")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown")
    meminfo = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in _read("/proc/meminfo")
               .splitlines() if ":" in ln}
    mem_kib = int(meminfo.get("MemTotal", "0 kB").split()[0])
    os_release = dict(ln.split("=", 1) for ln in _read("/etc/os-release").splitlines()
                      if "=" in ln)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    load = " ".join(_read("/proc/loadavg").split()[:3])
    return {
        "CPU": model,
        "cores": f"{os.cpu_count()} (usable by this run: {len(os.sched_getaffinity(0))})",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "OS": os_release.get("PRETTY_NAME", "").strip('"') or platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "commit": (commit or "unknown") + (" (with local changes under src/)" if dirty else ""),
        "load average at start": load,
    }


class Result:
    def __init__(self, script: Path, args: list[str]) -> None:
        self.script = script
        self.args = args
        self.output = ""
        self.status = "not run"
        self.seconds = 0.0

    @property
    def command(self) -> str:
        return " ".join([".venv/bin/python", f"bench/{self.script.name}", *self.args])

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run(script: Path, timeout: float) -> Result:
    result = Result(script, ARGS.get(script.name, []))
    if script.name in NEEDS_ROOT and os.geteuid() != 0:
        result.status = "skipped: needs root"
        return result
    t0 = time.monotonic()
    # A session of its own, so that a benchmark that runs too long is stopped
    # with everything it started (servers, browsers, lab helpers).
    proc = subprocess.Popen([sys.executable, str(script), *result.args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        result.status = "ok" if proc.returncode == 0 else f"failed (exit status {proc.returncode})"
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                out, _ = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                out = b""
        result.status = f"timed out after {timeout:.0f} s"
    result.output = out.decode(errors="replace")
    result.seconds = time.monotonic() - t0
    return result


def render(results: list[Result], info: dict[str, str], started: datetime,
           total: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`bench/report.py`) on {started:%Y-%m-%d %H:%M} UTC "
        f"in {total:.0f} s. Every figure is printed beside its baseline, measured in "
        "the same run on the same machine; compare them with each other, not with "
        "another machine's. The machine is shared with other work, so figures vary "
        "from run to run.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "## Summary",
        "",
        "| benchmark | what it measures | status | time |",
        "| --- | --- | --- | --- |",
        *(f"| [{r.script.stem}](#{r.script.stem}) | {summary(r.script)} | "
          f"{r.status} | {r.seconds:.0f} s |" for r in results),
        "",
    ]
    for r in results:
        lines += section(r, started, info["commit"])
    return "\n".join(lines)


def section(r: Result, started: datetime, commit: str) -> list[str]:
    lines = [f"## {r.script.stem}", "", summary(r.script), "",
             f"`{r.command}`: {r.status}, {r.seconds:.0f} s; run of {started:%Y-%m-%d %H:%M} "
             f"UTC at commit {commit}", ""]
    text = r.output.rstrip()
    if not r.ok and text.count("\n") > 40:
        text = "[...]\n" + "\n".join(text.splitlines()[-40:])
    if text:
        lines += ["```", text, "```", ""]
    return lines


def merge(old: str, results: list[Result], info: dict[str, str], started: datetime) -> str:
    """``old`` with the sections and summary rows of ``results`` replaced; the
    sections kept say the run they come from (the report's first line), the
    header says that the sections come from different runs."""
    head, *parts = old.split("\n## ")
    first = head.splitlines()[2] if len(head.splitlines()) > 2 else ""
    old_commit = next((ln.split("|")[2].strip() for ln in head.splitlines() + parts[0].splitlines()
                       if ln.startswith("| commit |")), "unknown") if parts else "unknown"
    old_run = first.split(" on ", 1)[1].split(" in ", 1)[0] if " on " in first else "?"
    fresh = {r.script.stem: r for r in results}
    out = [
        "# Benchmark results", "",
        "Sections from more than one run: each section says the run (date, commit) its "
        "figures come from. Every figure is printed beside its baseline, measured in the "
        "same run on the same machine; compare them with each other, not with another "
        "machine's. The machine is shared with other work, so figures vary from run to run.",
        "",
    ]
    for part in parts:
        name, _, body = part.partition("\n")
        if name == "Machine":
            out += ["## Machine", *(("| commit | each section says its run |"
                                     if ln.startswith("| commit |") else ln)
                                    for ln in body.splitlines())]
        elif name == "Summary":
            rows = []
            listed = set()
            for ln in body.splitlines():
                stem = ln[3:].split("]", 1)[0] if ln.startswith("| [") else None
                listed.add(stem)
                r = fresh.get(stem or "")
                rows.append(ln if r is None else f"| [{stem}](#{stem}) | {summary(r.script)} | "
                            f"{r.status} | {r.seconds:.0f} s |")
            while rows and not rows[-1].strip():
                rows.pop()
            rows += [f"| [{stem}](#{stem}) | {summary(r.script)} | {r.status} | "
                     f"{r.seconds:.0f} s |" for stem, r in sorted(fresh.items())
                     if stem not in listed]  # a benchmark new since the last full run
            out += ["## Summary", *rows, ""]
        elif name in fresh:
            out += section(fresh[name], started, info["commit"])
        else:
            kept = body.splitlines()
            for i, ln in enumerate(kept):
                if ln.startswith("`.venv/bin/python") and "run of" not in ln:
                    kept[i] = f"{ln}; run of {old_run} at commit {old_commit}"
                    break
            out += [f"## {name}", *kept]
    named = {part.partition("\n")[0] for part in parts}
    for stem, r in sorted(fresh.items()):
        if stem not in named:
            out += section(r, started, info["commit"])
    text = "\n".join(out).rstrip("\n") + "\n"
    return re.sub(r"([^\n])\n## ", r"\1\n\n## ", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", action="append", help="run only this benchmark (repeat)")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other benchmarks' sections of --output")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per benchmark")
    opts = parser.parse_args()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    info = machine()
    results = []
    for script in benchmarks(opts.only):
        print(f"=== {script.name} {' '.join(ARGS.get(script.name, []))}".rstrip(), flush=True)
        result = run(script, max(opts.timeout, TIMEOUTS.get(script.name, 0.0)))
        print(result.output.rstrip(), flush=True)
        print(f"--- {script.name}: {result.status}, {result.seconds:.0f} s", flush=True)
        results.append(result)
    if opts.merge and Path(opts.output).exists():
        text = merge(Path(opts.output).read_text(), results, info, started)
    else:
        text = render(results, info, started, time.monotonic() - t0) + "\n"
    Path(opts.output).write_text(text)
    print(f"wrote {opts.output} ({len(results)} benchmark(s) in {time.monotonic() - t0:.0f} s)")
    return 0 if all(r.ok or r.status.startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
