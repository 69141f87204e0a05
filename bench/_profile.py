"""Samples a running agent with py-spy and sums the stacks into self/inclusive time per function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def find_py_spy(repo: Path, tools: Path) -> str:
    """py-spy from PATH or .venv, else installed with pip into a private venv under TOOLS."""
    for candidate in (shutil.which("py-spy"), repo / ".venv" / "bin" / "py-spy"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    venv = tools / "py-spy-venv"
    binary = venv / "bin" / "py-spy"
    if not binary.exists():
        print(f"bench: installing py-spy into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "py-spy"], check=True)
    return str(binary)


def start_recording(
    py_spy: str, pid: int, seconds: float, out: Path, fmt: str, core: int | None
) -> subprocess.Popen[bytes]:
    """py-spy on PID for SECONDS, not pausing the target (--nonblocking), on CORE."""
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    cmd += ["--rate", "200", "--nonblocking", "--nolineno", "--format", fmt, "--output", str(out)]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive share of the busy samples per function, from py-spy's raw format.

    Each line is 'frame;frame;...;leaf COUNT', outermost first; idle samples are not in it
    (py-spy drops them unless --idle), so shares are of the time the agent was on the CPU.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} busy samples", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)
