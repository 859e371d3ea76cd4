"""Policy engine speed: compile time and evaluations per second.

    python bench/policy_engine.py [--quick] [--seed N]

For 100, 1,000, 10,000 and 100,000 rules (``--quick``: up to 10,000) it
generates a realistic policy (many images and namespaces, mostly exact image
names, some image and tag globs, label and namespace selectors, subnets of
both IP versions, DNS names and wildcards, single ports, lists, ranges and
``*``, mixed effects, some disabled rules), 10,000 workload identities and one
list of distinct attempts per rule count (5,000 at 100 rules down to 100 at
100,000: the linear scan must get through all of them too). Every variant runs
whole passes over that same list, and what each may cache is set before each
pass; all measured in this run on one core (CPU time):

- compile: ``compile_policy`` time;
- naive: the linear-scan reference evaluator (``cnnf.policy.naive``), which
  caches nothing: the baseline;
- new src: memo and verdict cache off: every attempt resolves its source
  identity, port and destination through the indexes, as a new identity's
  first attempt does;
- new dst: the source identities' rule sets memoised beforehand, destinations
  not (a known identity's new destination);
- known: sources and destinations memoised, verdict cache off (a known pair
  at a new port);
- repeat: the verdict cache holds every attempt (the same attempt again);
- ``new src`` ratio: new src over naive, the like-with-like comparison (neither
  caches anything); ``repeat`` ratio: repeat over naive;
- matched: share of attempts decided by a rule (the rest fall to the default).

Before timing, the indexed engine's verdict on every attempt is checked
against the linear scan's.

``--staged``: every tenth rule staged and a staged default effect (prevent):
each attempt is then decided twice, by the rules in force and by everything
staged in force (its "would" verdict), by both evaluators alike.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence

from cnnf.model import (
    ANY_PORT,
    ConnectionAttempt,
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    Endpoint,
    HostIdentity,
    HostObject,
    HostSelector,
    NetworkObject,
    Policy,
    PortRange,
    Rule,
    SubnetObject,
    Verdict,
    make_labels,
)
from cnnf.policy import compile_policy
from cnnf.policy.engine import CompiledPolicy
from cnnf.policy.naive import NaiveEvaluator

# CPU time of this process: figures are per core even on a shared machine.
clock = time.process_time

TEAMS = 100
SERVICES_PER_TEAM = 20  # 2,000 image repositories
NAMESPACES = 200
HOSTS = 50
COMMON_PORTS = (80, 443, 8080, 5432, 6379, 3306, 9090, 22, 53, 8443)


def _image(rng: random.Random) -> str:
    return f"team{rng.randrange(TEAMS)}/svc{rng.randrange(SERVICES_PER_TEAM)}"


def _ports(rng: random.Random) -> tuple[PortRange, ...]:
    roll = rng.random()
    if roll < 0.6:
        p = rng.choice(COMMON_PORTS) if rng.random() < 0.7 else rng.randrange(1024, 10000)
        return (PortRange(start=p, end=p),)
    if roll < 0.8:
        return tuple(PortRange(start=p, end=p) for p in rng.sample(COMMON_PORTS, 3))
    if roll < 0.95:
        lo = rng.randrange(1024, 30000)
        return (PortRange(start=lo, end=lo + rng.choice((10, 100, 1000))),)
    return (ANY_PORT,)


def _container_selector(rng: random.Random) -> ContainerSelector:
    roll = rng.random()
    if roll < 0.55:
        return ContainerSelector(images=(_image(rng),))
    if roll < 0.70:
        return ContainerSelector(
            images=(_image(rng), _image(rng)), namespaces=(f"ns-{rng.randrange(NAMESPACES)}",)
        )
    if roll < 0.78:
        return ContainerSelector(namespaces=(f"ns-{rng.randrange(NAMESPACES)}",))
    if roll < 0.85:
        return ContainerSelector(labels=(f"app=svc{rng.randrange(SERVICES_PER_TEAM)}",))
    if roll < 0.93:
        return ContainerSelector(images=(f"team{rng.randrange(TEAMS)}/*",))
    if roll < 0.99:
        return ContainerSelector(images=(f"{_image(rng)}:1.*",))
    # the few selectors that are only globs (scanned for every new identity)
    return ContainerSelector(
        images=("*",),
        labels=(f"tier=b*{rng.randrange(100)}",),
    )


def make_policy(n_rules: int, rng: random.Random, *, staged: bool = False) -> Policy:
    objects: list[NetworkObject] = []
    n_cont = max(10, n_rules // 2)
    n_net = max(2, n_rules // 50)
    for i in range(n_cont):
        objects.append(ContainerObject(name=f"c{i}", selector=_container_selector(rng)))
    for i in range(n_net):
        if rng.random() < 0.8:
            cidr = f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/{rng.choice((16, 24, 28, 32))}"
        else:
            cidr = f"fd00:{rng.randrange(65536):x}::/{rng.choice((32, 48, 64))}"
        objects.append(SubnetObject(name=f"s{i}", cidrs=(cidr,)))
        partner = f"partner{rng.randrange(n_net)}.example"
        domain = partner if rng.random() < 0.5 else f"*.{partner}"
        objects.append(DnsObject(name=f"d{i}", domains=(domain, f"api{i}.{partner}")))
    for i in range(HOSTS // 5):
        objects.append(HostObject(name=f"h{i}", selector=HostSelector(hosts=(f"node-{i}*",))))
    effects = [Effect.ALLOW] * 14 + [Effect.ALERT] * 3 + [Effect.PREVENT] * 3
    container_rules = []
    for i in range(n_rules):
        roll = rng.random()
        if roll < 0.7:
            dst = f"c{rng.randrange(n_cont)}"
        elif roll < 0.85:
            dst = f"s{rng.randrange(n_net)}"
        else:
            dst = f"d{rng.randrange(n_net)}"
        container_rules.append(
            Rule(
                id=i + 1,
                name=f"rule-{i + 1}",
                src=f"c{rng.randrange(n_cont)}",
                dst=dst,
                ports=_ports(rng),
                effect=rng.choice(effects),
                disabled=rng.random() < 0.05,
                staged=staged and i % 10 == 5,
            )
        )
    host_rules = [
        Rule(
            id=n_rules + 1 + i,
            name=f"host-rule-{i}",
            src=f"h{rng.randrange(HOSTS // 5)}",
            dst=f"h{rng.randrange(HOSTS // 5)}",
            ports=(PortRange(start=22, end=22),),
        )
        for i in range(20)
    ]
    return Policy(
        container_enabled=True,
        default_effect=Effect.ALLOW,
        staged_default_effect=Effect.PREVENT if staged else None,
        objects=tuple(objects),
        container_rules=tuple(container_rules),
        host_rules=tuple(host_rules),
        revision=n_rules,
    )


def make_identities(n: int, rng: random.Random) -> list[Endpoint]:
    out = []
    for i in range(n):
        team, svc = rng.randrange(TEAMS), rng.randrange(SERVICES_PER_TEAM)
        identity = ContainerIdentity(
            image=f"team{team}/svc{svc}:1.{rng.randrange(10)}",
            name=f"svc{svc}-{i}",
            labels=make_labels({"app": f"svc{svc}", "tier": f"back{rng.randrange(200)}"}),
            namespace=f"ns-{rng.randrange(NAMESPACES)}",
            cluster="prod",
            host=f"node-{rng.randrange(HOSTS)}",
            id=f"{i:012x}",
        )
        address = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        out.append(Endpoint(address=address, container=identity))
    return out


def _aimed(
    rule: Rule,
    policy_objects: dict[str, NetworkObject],
    by_image: dict[str, list[Endpoint]],
    rng: random.Random,
) -> tuple[Endpoint, Endpoint, int] | None:
    """Endpoints and a port aimed at ``rule`` (workloads talk to what policy
    expects); None when the rule's objects are not simple to aim at."""

    def workload(name: str) -> Endpoint | None:
        obj = policy_objects[name]
        if isinstance(obj, ContainerObject) and obj.selector.images:
            image = obj.selector.images[0].split(":")[0]
            if "*" not in image and by_image.get(image):
                return rng.choice(by_image[image])
        return None

    src = workload(rule.src)
    if src is None:
        return None
    obj = policy_objects[rule.dst]
    if isinstance(obj, SubnetObject):
        net = obj.networks()[0]
        dst: Endpoint | None = Endpoint(address=str(net.network_address + (net.num_addresses > 1)))
    elif isinstance(obj, DnsObject):
        name = obj.domains[0].replace("*", f"www{rng.randrange(10)}")
        dst = Endpoint(address=f"203.0.113.{rng.randrange(256)}", domains=(name,))
    else:
        dst = workload(rule.dst)
    if dst is None:
        return None
    ports = rng.choice(rule.ports)
    return src, dst, rng.randint(ports.start, min(ports.end, ports.start + 50))


def make_attempts(
    n: int, identities: Sequence[Endpoint], policy: Policy, rng: random.Random
) -> list[ConnectionAttempt]:
    """``n`` distinct attempts: about half aimed at a rule, the rest random
    (workload to workload, to outside addresses, to DNS names, host to host)."""
    n_net = max(2, len(policy.container_rules) // 50)
    hosts = [
        Endpoint(address=f"192.168.0.{i}", host=HostIdentity(name=f"node-{i}"))
        for i in range(HOSTS)
    ]
    by_image: dict[str, list[Endpoint]] = {}
    for ep in identities:
        assert ep.container is not None
        by_image.setdefault(ep.container.image_name, []).append(ep)
    objects = {obj.name: obj for obj in policy.objects}
    rules = policy.container_rules
    seen: set[ConnectionAttempt] = set()
    out: list[ConnectionAttempt] = []
    while len(out) < n:
        roll = rng.random()
        aimed = _aimed(rng.choice(rules), objects, by_image, rng) if roll < 0.5 else None
        if aimed is not None:
            src, dst, port = aimed
        else:
            if roll < 0.53:
                src, dst = rng.choice(hosts), rng.choice(hosts)
            else:
                src = rng.choice(identities)
                if roll < 0.8:
                    dst = rng.choice(identities)
                elif roll < 0.9:
                    dst = Endpoint(address=f"10.{rng.randrange(256)}.{rng.randrange(256)}.7")
                else:
                    p = rng.randrange(n_net)
                    name = f"api{rng.randrange(n_net)}.partner{p}.example"
                    dst = Endpoint(address=f"203.0.113.{rng.randrange(256)}", domains=(name,))
            port = rng.choice(COMMON_PORTS) if rng.random() < 0.8 else rng.randrange(1, 30000)
        attempt = ConnectionAttempt(src=src, dst=dst, port=port)
        if attempt not in seen:  # all distinct: a pass repeats none of them
            seen.add(attempt)
            out.append(attempt)
    return out


def rate(
    evaluate: Callable[[ConnectionAttempt], Verdict],
    attempts: Sequence[ConnectionAttempt],
    budget: float,
    before_pass: Callable[[], None] | None = None,
) -> float:
    """Evaluations per CPU second over whole passes of ``attempts`` (at least
    one, then more until ``budget`` CPU seconds are spent), so every variant
    is measured on exactly the same attempts. ``before_pass`` (not timed)
    puts the caches back into the state the variant describes. CPU time of
    this process, not wall time: the figure is for one core even when other
    processes share the machine."""
    done = 0
    elapsed = 0.0
    gc.disable()
    try:
        while done == 0 or elapsed < budget:
            if before_pass is not None:
                before_pass()
            start = clock()
            for a in attempts:
                evaluate(a)
            elapsed += clock() - start
            done += len(attempts)
    finally:
        gc.enable()
    return done / elapsed


def known_sources(policy: Policy, attempts: Sequence[ConnectionAttempt]) -> CompiledPolicy:
    """A compiled policy whose per-identity memo holds every source identity of
    ``attempts`` and nothing else: no destination is memoised, and nothing new is
    memoised while it runs (the memo tables are frozen), verdict cache off. It
    reaches into the engine's private tables: only a benchmark may."""
    compiled = compile_policy(policy, verdict_cache=0)
    tables = (compiled._container, compiled._host)
    for a in attempts:
        if a.src.container is not None:
            tables[0].src_mask(a.src.container)
        elif a.src.host is not None:
            tables[1].src_mask(a.src.host)
    for table in tables:
        table.dst_memo.clear()
        table.memo_limit = 0  # from here on _remember() stores nothing
    return compiled


def attempts_for(n_rules: int, quick: bool) -> int:
    """How many attempts every variant runs on: as many as the linear scan
    gets through in a few CPU seconds here, since it too runs all of them."""
    if n_rules <= 100:
        return 5000
    if n_rules <= 1000:
        return 2000
    if n_rules <= 10_000:
        return 300 if quick else 1000
    return 100


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="up to 10,000 rules, shorter runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--staged", action="store_true",
                        help="every tenth rule staged and a staged default effect")
    args = parser.parse_args(argv)
    sizes = (100, 1000, 10_000) if args.quick else (100, 1000, 10_000, 100_000)
    budget = 0.5 if args.quick else 1.5
    rng = random.Random(args.seed)
    identities = make_identities(10_000, rng)
    print(
        f"policy engine, one core (CPU time); 10,000 workload identities;"
        f" python {sys.version.split()[0]}"
        + ("; every tenth rule staged and a staged default (would verdicts)"
           if args.staged else "")
    )
    print("every column runs on the same distinct attempts, whole passes; evaluations/s:")
    header = (
        f"{'rules':>8} {'attempts':>9} {'compile s':>10} {'naive/s':>9} {'new src/s':>10} "
        f"{'new dst/s':>10} {'known/s':>10} {'repeat/s':>10} {'new src':>8} {'repeat':>8} "
        f"{'matched':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        prng = random.Random(args.seed + n)
        policy = make_policy(n, prng, staged=args.staged)
        attempts = make_attempts(attempts_for(n, args.quick), identities, policy, prng)

        gc.collect()
        t0 = clock()
        compiled = compile_policy(policy, verdict_cache=0, identity_cache=0)
        compile_s = clock() - t0

        naive = NaiveEvaluator(policy)
        gc.disable()
        t0 = clock()
        expected = [naive.evaluate(a) for a in attempts]  # every attempt checked below
        naive_s = clock() - t0
        gc.enable()
        for a, want in zip(attempts, expected, strict=True):
            got = compiled.evaluate(a)
            if got != want:
                print(f"MISMATCH at {n} rules: {a}\n  naive {want}\n  indexed {got}")
                return 1
        matched = sum(v.matched for v in expected) / len(attempts)
        # that pass is the baseline's first; more passes only if it was short
        naive_rate = (len(attempts) / naive_s if naive_s >= budget
                      else rate(naive.evaluate, attempts, budget))

        # a new identity's first attempt: nothing memoised, nothing cached
        new_src_rate = rate(compiled.evaluate, attempts, budget)
        del compiled

        # a known identity's new destination: its rule set memoised, the
        # destination resolved through the indexes
        known_src = known_sources(policy, attempts)
        new_dst_rate = rate(known_src.evaluate, attempts, budget)
        del known_src

        # known ends, a new port: both memos warm, verdict cache off
        memo = compile_policy(policy, verdict_cache=0)
        for a in attempts:
            memo.evaluate(a)
        known_rate = rate(memo.evaluate, attempts, budget)
        del memo

        # a repeated attempt: the verdict cache holds every attempt
        cached = compile_policy(policy)
        for a in attempts:
            cached.evaluate(a)
        repeat_rate = rate(cached.evaluate, attempts, budget)
        del cached

        print(
            f"{n:>8,} {len(attempts):>9,} {compile_s:>10.3f} {naive_rate:>9,.0f} "
            f"{new_src_rate:>10,.0f} {new_dst_rate:>10,.0f} {known_rate:>10,.0f} "
            f"{repeat_rate:>10,.0f} {new_src_rate / naive_rate:>7,.0f}x "
            f"{repeat_rate / naive_rate:>7,.0f}x {matched:>7.0%}",
            flush=True,
        )
    print("naive: linear scan over the rules (cnnf.policy.naive), nothing cached")
    print("new src: identity memo and verdict cache off: each attempt resolves its source,"
          " port and destination")
    print("new dst: the sources' rule sets memoised beforehand, destinations resolved each time")
    print("known: source and destination memoised (a known pair, a new port), verdict cache off")
    print("repeat: the verdict cache holds every attempt (the same attempt again)")
    print("new src = new src/s over naive/s (neither caches: like with like);"
          " repeat = repeat/s over naive/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
