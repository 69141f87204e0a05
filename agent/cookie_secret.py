"""``--cookie-secret-file`` watched: a new secret written there becomes the agent's, and the
one before it is still taken (RFC 9018 §4.4 rollover), with no restart.

Agents behind one anycast address share the file's secret. Rolling it means writing the
new one to each agent's file, one after another: an agent that has it makes cookies with
it and still takes those the others make with the old one, so a client that moves between
them in the meantime keeps its standing (or at worst gets a fresh cookie with an answer:
a cookie that does not verify is never refused). The old secret is taken until the next
change; the cookies made with it expire within the hour anyway.

Polled like the policy files (agent/reload.py): a stat per interval, no new dependency,
and a ConfigMap's symlink swap shows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.config import read_cookie_secret
from agent.periodic import Periodic
from dnsmesh.cookies import ServerCookies
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)  # follows symlinks, so a swapped link target shows
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class CookieSecretWatcher(Periodic):
    """Rotates ``cookies`` to the secret in ``path`` whenever the file changes; a bad
    file is logged and the secret in use kept (it was good at start, so nothing breaks)."""

    def __init__(self, path: Path, cookies: ServerCookies, *, interval: float) -> None:
        super().__init__(interval)
        self.path = path
        self.cookies = cookies
        self._seen = _stamp(path)  # what the start read (config_from_args)

    def check(self) -> bool:
        """Read the file again if it changed; whether the secret was rotated."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            secret = read_cookie_secret(self.path)
        except ConfigError as exc:
            log.error("cookie.secret_reload_failed", extra=fields(error=str(exc)))
            return False
        if secret == self.cookies.secret:
            return False
        self.cookies.rotate(secret)
        log.info("cookie.secret_rotated", extra=fields(path=str(self.path)))
        return True

    async def tick(self) -> None:
        self.check()
