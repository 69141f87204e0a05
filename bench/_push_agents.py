"""The worker side of bench/controller_push.py: one process of simulated WebSocket agents.

Each agent says hello at revision 0, ACKs the snapshot, then ACKs every delta and notes
when it arrived; the driver asks, over stdin/stdout in JSON lines, for those times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

ROUND_DEADLINE_S = 60.0


async def _agent(
    url: str,
    token: str,
    agent_id: str,
    gate: asyncio.Semaphore,
    times: dict[int, tuple[float, float]],
    ready: asyncio.Event,
    progress: asyncio.Event,
    compression: str | None,
) -> None:
    from websockets.asyncio.client import connect

    from dnsmesh import protocol

    async with gate:  # bounded concurrent handshakes: the listen backlog is finite
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            proxy=None,
            open_timeout=180,  # a controller busy with thousands of peers answers late
            compression=compression,
        )
        hello = protocol.Hello(agent_id=agent_id, node_name=f"node-{agent_id}", revision=0)
        await ws.send(protocol.encode_message(hello))
        first = protocol.decode_message(await ws.recv())
        if not isinstance(first, protocol.SnapshotMessage | protocol.Delta):
            raise RuntimeError(f"{agent_id}: the first answer to the hello was {first!r}")
        await ws.send(protocol.encode_message(protocol.Ack(revision=first.revision)))
    ready.set()
    async with ws:
        async for data in ws:
            received = time.monotonic()
            message = protocol.decode_message(data)
            if isinstance(message, protocol.Delta | protocol.SnapshotMessage):
                await ws.send(protocol.encode_message(protocol.Ack(revision=message.revision)))
                times[message.revision] = (received, time.monotonic())
                progress.set()


async def run_worker(args: argparse.Namespace) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    count, prefix = args.worker_agents, args.worker_prefix
    token = os.environ["DNSMESH_BENCH_TOKEN"]
    gate = asyncio.Semaphore(64)
    times: list[dict[int, tuple[float, float]]] = [{} for _ in range(count)]
    readies = [asyncio.Event() for _ in range(count)]
    progress = asyncio.Event()
    compression = "deflate" if args.deflate else None
    tasks = [
        asyncio.create_task(
            _agent(
                args.url, token, f"{prefix}-{i}", gate, times[i], readies[i], progress, compression
            )
        )
        for i in range(count)
    ]
    deadline = time.monotonic() + args.connect_deadline
    while not all(r.is_set() for r in readies) and time.monotonic() < deadline:
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            print(json.dumps({"error": repr(failed[0].exception())}), flush=True)
            return
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": sum(r.is_set() for r in readies)}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command.get("quit"):
            break
        revision = command["expect"]
        deadline = time.monotonic() + ROUND_DEADLINE_S
        while not all(revision in t for t in times):
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), deadline - time.monotonic())
            except (TimeoutError, ValueError):
                break
        got = [t[revision] for t in times if revision in t]
        print(
            json.dumps({"revision": revision, "times": got, "missing": count - len(got)}),
            flush=True,
        )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
