"""``dnsmesh logs`` on a written query log: each filter, the table, the raw lines."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import dns.message
import pytest

from cli.logs import run_logs
from cli.main import build_parser
from dnsmesh.dnswire import Query, parse_query
from dnsmesh.errors import ConfigError
from dnsmesh.policy import parse_policy
from dnsmesh.querylog import LineFormatter, Record
from dnsmesh.snapshot import compile_snapshot
from tests.support.policies import policy_doc


def ask(name: str, rdtype: str = "A") -> Query:
    return parse_query(dns.message.make_query(name, rdtype).to_wire())


def response(query: Query, rcode: int) -> bytes:
    return b"\x00\x01\x81" + bytes([0x80 | rcode]) + bytes(8)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """Lines as the agent writes them, one per source, and a summary and a stray line."""
    compiled = compile_snapshot([parse_policy(policy_doc("web", [{"address": "10.0.0.1"}]))])
    policy = compiled.policies()[0]
    web = ask("web.mesh.internal")
    records: list[Record] = [
        (1.0, 1.001, "10.1.2.3", web, "policy", policy.respond(web, "10.1.2.3", random.Random()),
         policy, "", 0, 0),
        (2.0, 2.02, "10.1.2.4", ask("www.example.com"), "upstream",
         response(ask("www.example.com"), 0), None, "", 0, 0),
        (3.0, 3.0, "10.9.0.1", ask("nothing.example.com", "AAAA"), "cache",
         response(ask("x"), 3), None, "", 0, 0),
        (4.0, 4.0, "192.0.2.1", ask("web.mesh.internal"), "refused",
         response(web, 5), None, "", 0, 0),
        (5.0, 5.0, "2001:db8::1", ask("notweb.mesh.internalx"), "error",
         response(web, 2), None, "upstream", 0, 0),
    ]  # fmt: skip
    formatter = LineFormatter()
    lines = [formatter.line(record, 1_800_000_000.0) for record in records]
    lines.append(formatter.summary(12, 0, 1_800_000_010.0) or "")
    lines.append("not json\n")
    path = tmp_path / "queries.log"
    path.write_text("".join(lines))
    return path


def run(*args: str) -> list[str]:
    """``dnsmesh logs ARGS`` as parsed by the real parser (main() is left out: it would
    configure logging for the whole test session)."""
    out = io.StringIO()
    assert run_logs(build_parser().parse_args(["logs", *args]), out) == 0
    return out.getvalue().splitlines()


def names(log_file: Path, *filters: str) -> list[object]:
    lines = [json.loads(x) for x in run("--file", str(log_file), "--json", *filters)]
    return [line.get("name", "summary") for line in lines]


def test_without_filters_every_line_and_the_summary(
    capsys: pytest.CaptureFixture[str], log_file: Path
) -> None:
    assert names(log_file) == [
        "web.mesh.internal",
        "www.example.com",
        "nothing.example.com",
        "web.mesh.internal",
        "notweb.mesh.internalx",
        "summary",
    ]
    assert "1 lines were not query log lines" in capsys.readouterr().err


def test_name_is_a_suffix_on_label_boundaries(log_file: Path) -> None:
    found = names(log_file, "--name", "Mesh.Internal.")
    assert found == ["web.mesh.internal", "web.mesh.internal", "summary"]
    assert names(log_file, "--name", "example.com") == [
        "www.example.com",
        "nothing.example.com",
        "summary",
    ]


def test_client_is_an_address_or_a_network(log_file: Path) -> None:
    assert names(log_file, "--client", "10.1.2.4") == ["www.example.com", "summary"]
    assert names(log_file, "--client", "10.1.0.0/16")[:2] == [
        "web.mesh.internal",
        "www.example.com",
    ]
    assert names(log_file, "--client", "2001:db8::/32")[0] == "notweb.mesh.internalx"


def test_rcode_and_source_filters_combine(log_file: Path) -> None:
    assert names(log_file, "--rcode", "nxdomain") == ["nothing.example.com", "summary"]
    assert names(log_file, "--source", "refused", "--source", "error") == [
        "web.mesh.internal",
        "notweb.mesh.internalx",
        "summary",
    ]
    assert names(log_file, "--source", "policy", "--rcode", "SERVFAIL") == ["summary"]


def test_the_table_shows_the_pick_and_the_left_out_lines(log_file: Path) -> None:
    header, policy, *rest = run("--file", str(log_file))
    assert header.split() == ["TIME", "CLIENT", "SOURCE", "RCODE", "TYPE", "MS", "NAME"]
    assert policy.split()[2:8] == [
        "10.1.2.3",
        "policy",
        "NOERROR",
        "A",
        "1.000",
        "web.mesh.internal",
    ]
    assert policy.endswith("-> 10.0.0.1 (policy web)")
    assert rest[3].endswith("notweb.mesh.internalx  [upstream]")
    assert rest[-1].endswith("-- 12 lines left out by --query-log-max-rate")


def test_bad_input_is_a_clear_error(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        run("--file", str(tmp_path / "nope.log"))
    with pytest.raises(ConfigError, match="is not an address or CIDR"):
        run("--file", str(log_file), "--client", "10.1.2")
