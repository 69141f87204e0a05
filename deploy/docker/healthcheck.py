"""The image's HEALTHCHECK: healthy when one URL answers 200.

The URL is ``$DNSMESH_HEALTHCHECK_URL``, by default the agent's admin listener
(``http://127.0.0.1:9153/healthz``, its ``--admin-listen`` default). A controller sets it to
``https://127.0.0.1:8053/readyz`` and ``$DNSMESH_HEALTHCHECK_CA`` to the bundle that
verifies it (``DATA_DIR/tls/ca-bundle.pem``: 127.0.0.1 is always in the serving
certificate). Standard library only, and never through a proxy from the environment.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9153/healthz"
TIMEOUT_SECONDS = 2.0


def check(url: str, ca_file: str | None) -> str | None:
    """None when ``url`` answers 200, else why not."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=ca_file)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except (OSError, ValueError) as exc:  # refused, timed out, TLS refused, an HTTP error
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main() -> int:
    url = os.environ.get("DNSMESH_HEALTHCHECK_URL") or DEFAULT_URL
    problem = check(url, os.environ.get("DNSMESH_HEALTHCHECK_CA") or None)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
