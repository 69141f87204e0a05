"""Policy files: many documents a file, folders, and errors that name file, document and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsmesh.errors import PolicyFileError
from dnsmesh.policyfile import load_policy_path, parse_policy_documents

REPO = Path(__file__).resolve().parents[2]

ONE = """
apiVersion: dnsmesh/v1
kind: Policy
metadata: {name: one}
spec: {domain: one.example, endpoints: [{address: 10.0.0.1}]}
"""
TWO = """
apiVersion: dnsmesh/v1
kind: Policy
metadata: {name: two}
spec: {domain: two.example, endpoints: [{address: 10.0.0.2}]}
"""


def test_several_documents_and_empty_ones() -> None:
    loaded = parse_policy_documents(ONE + "---\n" + TWO + "---\n", "a.yaml")
    assert [s.policy.name for s in loaded] == ["one", "two"]
    assert [s.document for s in loaded] == [1, 2]


def test_one_bad_document_refuses_the_file_and_names_where() -> None:
    bad = TWO.replace("10.0.0.2", "not-an-ip")
    with pytest.raises(PolicyFileError) as caught:
        parse_policy_documents(ONE + "---\n" + bad, "svc.yaml")
    error = caught.value
    assert error.source == "svc.yaml" and error.document == 2
    assert error.errors[0].path == "spec.endpoints[0].address"
    assert "svc.yaml (document 2)" in str(error)


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(PolicyFileError, match="line 2"):
        parse_policy_documents("a: 1\n b: [\n", "broken.yaml")


def test_a_folder_loads_yaml_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ONE)
    (tmp_path / "b.yml").write_text(TWO)
    (tmp_path / "notes.txt").write_text("not a policy")
    assert [s.policy.name for s in load_policy_path(tmp_path)] == ["one", "two"]


def test_a_duplicate_across_files_names_the_second_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ONE)
    (tmp_path / "b.yaml").write_text(ONE.replace("name: one", "name: again"))
    with pytest.raises(PolicyFileError) as caught:
        load_policy_path(tmp_path)
    assert caught.value.source.endswith("b.yaml")
    assert caught.value.errors[0].path == "spec.domain"


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="no such file"):
        load_policy_path(tmp_path / "nowhere")


def test_the_shipped_examples_validate() -> None:
    loaded = load_policy_path(REPO / "policies")
    assert {s.policy.name for s in loaded} >= {"checkout", "orders-db", "cart", "tenant-api"}
