#!/usr/bin/env python3
"""Scrapes a URL every INTERVAL seconds until SIGTERM, as Prometheus would the agent's
/metrics during a benchmark (bench/dns.py --metrics); prints what it did when stopped.

    python3 bench/_scraper.py http://127.0.0.1:9153/metrics 1.0

Standard library only, like bench/dns.py.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.request
from types import FrameType


def main() -> None:
    url, interval = sys.argv[1], float(sys.argv[2])
    stopped = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    done = failed = size = 0
    spent = 0.0
    while not stopped:
        began = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                size = len(response.read())
            done += 1
        except OSError:
            failed += 1
        spent += time.monotonic() - began
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    mean_ms = 1000 * spent / max(1, done + failed)
    print(f"scrapes={done} failed={failed} bytes={size} mean_ms={mean_ms:.1f}", flush=True)


if __name__ == "__main__":
    main()
