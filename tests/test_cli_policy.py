"""`cnnf policy ...` against the example files, through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnf.cli import app
from cnnf.policy.document import load_policy, schema_text

ROOT = Path(__file__).resolve().parents[1]
SHOP = str(ROOT / "examples" / "shop-policy.yaml")
EXPORT = str(ROOT / "examples" / "prisma-export.json")

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["policy", *args], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_validate_native_and_original() -> None:
    assert run("validate", SHOP) == (0, "ok: 11 objects, 9 container rules, 1 host rules\n", "")
    code, out, err = run("validate", EXPORT)
    assert code == 0
    assert out == "ok (original format): 7 objects, 4 container rules, 1 host rules\n"
    kept = "collection name kept in the object's description"
    assert err.splitlines() == [
        f"warning: not mapped: networkEntities[0].collections[0]: {kept} "
        "(collection 'shop-frontend')",
        f"warning: not mapped: networkEntities[1].collections[0]: {kept} (collection 'shop-api')",
        f"warning: not mapped: networkEntities[2].collections[0]: {kept} (collection 'shop-db')",
        f"warning: not mapped: networkEntities[3].collections[0]: {kept} (collection 'shop-web')",
        "warning: not mapped: networkEntities[4].subnets[0].name: subnet name 'internet-v4' has "
        "no native field (the CIDR 0.0.0.0/0 is kept)",
        f"warning: not mapped: networkEntities[6].collections[0]: {kept} (collection 'all-nodes')",
    ]


def test_validate_reports_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(SHOP).read_text()
                   .replace("ports: [8080]", "ports: [70000]")
                   .replace("dst: partner", "dst: nowhere")
                   .replace("cidrs: [0.0.0.0/0", "cidrs: [0.0.0.0/99"))
    code, out, err = run("validate", str(bad))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: {bad}: invalid policy (3 error(s))",
        "  objects[10].cidrs: '0.0.0.0/99' is not an IPv4 or IPv6 CIDR",
        "  containerRules[0].ports[0]: 70000 is above 65535",
        "  containerRules[5].dst: no object named 'nowhere'",
    ]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("apiVersion: cnnf/v9\nkind: Policy\nspec: {}\n", "apiVersion: 'cnnf/v9' is not supported"),
        ("- 1\n", "a policy document is a mapping"),
        ("a: [\n", "invalid YAML"),
        ("{}", "apiVersion: required field is missing"),
    ],
)
def test_bad_files_give_clear_errors_not_tracebacks(tmp_path: Path, content: str,
                                                    needle: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(content)
    code, out, err = run("validate", str(path))
    assert code == 1 and out == "" and needle in err and "Traceback" not in err


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in err and "No such file" in err


def test_stdin() -> None:
    code, out, _ = run("validate", "-", stdin=Path(SHOP).read_text())
    assert (code, out) == (0, "ok: 11 objects, 9 container rules, 1 host rules\n")


def test_lint_clean_and_with_findings() -> None:
    assert run("lint", SHOP) == (0, "no findings\n", "")
    code, out, _ = run("lint", EXPORT)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("warning: containerRules[3]: rule 4 'api-to-partner' (allow, to "
                               "dns 'partner') and containerRules[2] rule 3 'web-to-internet'")
    assert lines[0].endswith("[subnet-conflict]")
    assert lines[1] == "1 finding(s): 0 error(s), 1 warning(s), 0 info"
    code, out, _ = run("lint", EXPORT, "--format", "json")
    assert code == 1
    (finding,) = json.loads(out)
    assert (finding["code"], finding["severity"], finding["path"]) == (
        "subnet-conflict", "warning", "containerRules[3]")


def test_lint_info_only_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(Path(SHOP).read_text().replace(
        "ports: [80], effect: alert}", "ports: [80], effect: alert, disabled: true}"))
    code, out, _ = run("lint", str(path))
    assert code == 0
    assert out.splitlines() == [
        "info: containerRules[6]: rule 7 'worker-to-internet' is disabled and never evaluated "
        "[disabled-rule]",
        "1 finding(s): 0 error(s), 0 warning(s), 1 info",
    ]


def test_convert_both_ways_and_back(tmp_path: Path) -> None:
    code, native, err = run("convert", EXPORT, "--to", "native")
    assert code == 0 and "not mapped: networkEntities[4].subnets[0].name" in err
    policy = load_policy(native)
    assert len(policy.container_rules) == 4

    out = tmp_path / "prisma.json"
    code, stdout, err = run("convert", SHOP, "--to", "prisma", "-o", str(out))
    assert (code, stdout) == (0, "")
    assert err == ("warning: not mapped: defaultEffect: alert has no equivalent (the original "
                   "product allows unmatched connections)\n")
    prisma = json.loads(out.read_text())
    assert prisma["_id"] == "networkFirewall" and len(prisma["networkEntities"]) == 11

    code, again, _ = run("convert", str(out), "--to", "native", "--format", "yaml")
    assert code == 0
    back = load_policy(again)
    shop = load_policy(Path(SHOP).read_text())
    assert back.container_rules == shop.container_rules and back.objects == shop.objects
    code, text, _ = run("convert", str(out), "--to", "prisma", "--format", "yaml")
    assert code == 0 and yaml.safe_load(text) == prisma


def test_convert_needs_a_known_target() -> None:
    result = runner.invoke(app, ["policy", "convert", SHOP, "--to", "xml"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("src", "dst", "port", "first_line"),
    [
        ("image=shop/api:2.1,ns=shop-web,host=node-1",
         "image=shop/payments:1.4,ns=shop-data,label=pci=true",
         "9090", "verdict: allow by container rule 2 'api-to-payments' (revision 0)"),
        # the lab's lateral probes: frontend to db and to payments' ssh
        ("image=shop/frontend:1.0,ns=shop-web", "image=shop/db:13,ns=shop-data", "5432",
         "verdict: prevent by container rule 8 'web-to-data' (revision 0)"),
        ("image=shop/frontend:1.0,ns=shop-web",
         "image=shop/payments:1.4,ns=shop-data,label=pci=true", "22",
         "verdict: prevent by container rule 8 'web-to-data' (revision 0)"),
        ("image=shop/worker:1.0,ns=shop-data", "203.0.113.10", "80",
         "verdict: alert by container rule 7 'worker-to-internet' (revision 0)"),
        ("image=shop/frontend,ns=shop-web", "93.184.216.34", "443",
         "verdict: prevent by container rule 9 'web-to-internet' (revision 0)"),
        ("image=shop/payments,ns=shop-data,label=pci=true",
         "addr=203.0.113.20,domain=api.partner.example",
         "443", "verdict: allow by container rule 6 'payments-to-partner' (revision 0)"),
        ("image=shop/worker,ns=shop-data", "image=shop/cache,ns=shop-data", "6379",
         "verdict: alert (no rule matched: default effect; revision 0)"),
        ("host=node-1", "host=node-2", "22",
         "verdict: allow by host rule 1 'node-ssh' (revision 0)"),
    ],
)
def test_explain(src: str, dst: str, port: str, first_line: str) -> None:
    code, out, err = run("explain", SHOP, "--src", src, "--dst", dst, "--port", port)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == first_line
    assert len(lines) > 1  # the trace


def test_explain_trace_names_each_rule() -> None:
    code, out, _ = run("explain", SHOP, "--src", "image=shop/api,ns=shop-web", "--dst",
                       "image=shop/cache,ns=shop-data", "--port", "6379")
    assert code == 0
    assert out.splitlines()[1:] == [
        "  container rule 1 'frontend-to-api': no-match: source shop/api does not match object "
        "'frontend' (images shop/frontend)",
        "  container rule 2 'api-to-payments': no-match: destination shop/cache does not match "
        "object 'payments' (images shop/payments)",
        "  container rule 3 'api-to-db': no-match: destination shop/cache does not match object "
        "'db' (images shop/db)",
        "  container rule 4 'api-to-cache': matched: source shop/api matches 'api', destination "
        "shop/cache matches 'cache', port 6379 in 6379",
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--src", "colour=red", "--dst", "10.0.0.1", "--port", "80"], "unknown key 'colour'"),
        (["--src", "image=x", "--dst", "10.0.0.300", "--port", "80"],
         "'10.0.0.300' is not an IPv4 or IPv6 address"),
        (["--src", "image=x", "--dst", "10.0.0.1", "--port", "70000"], "65535"),
    ],
)
def test_explain_bad_input(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["policy", "explain", SHOP, *args])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_schema_matches_the_shipped_file() -> None:
    code, out, _ = run("schema")
    assert code == 0 and out == schema_text()
    shipped = ROOT / "src" / "cnnf" / "policy" / "schema" / "policy-v1.json"
    assert out == shipped.read_text()
