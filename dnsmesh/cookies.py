"""DNS Cookies (RFC 7873) with the interoperable server cookie of RFC 9018: pure, no I/O.

A client sends 8 octets of its own (the client cookie) in an EDNS COOKIE option; we answer
with them and 16 of ours behind: version 1, three reserved octets, a 32-bit timestamp and
SipHash-2-4 over client cookie | version | reserved | timestamp | client IP, keyed with a
server secret. A client that sends our server cookie back proves that it receives what is
sent to its address: a spoofed source cannot, since it never saw our reply.

The same construction on every agent, with a shared secret (``--cookie-secret-file``),
lets a client move between the agents behind one anycast address (RFC 9018 §1). Time is
passed in (``now``, Unix seconds), so the window and the renewal are tested without
waiting.

SipHash-2-4 comes from ``siphash24``: a maintained C implementation (a thin wrapper over
c-siphash, itself from the reference code) with wheels for every CPython; it ships no
type information, so it is called here only, behind a typed function.
"""

from __future__ import annotations

import hmac
import socket
import struct
from typing import Final

from siphash24 import siphash24

OPTION_COOKIE: Final = 10  # the EDNS option code (RFC 7873 §4)
RCODE_BADCOOKIE: Final = 23  # extended: RFC 7873 §8
CLIENT_COOKIE_LEN: Final = 8
SERVER_COOKIE_LEN: Final = 16  # RFC 9018 §4: version 1's fixed size
SECRET_LEN: Final = 16  # SipHash-2-4's key
VERSION: Final = 1
# RFC 9018 §4.3: a server cookie is taken up to an hour after it was made and up to five
# minutes before (clocks of agents sharing a secret differ a little); one older than half
# an hour is still valid but replaced in the reply, so a client keeps a fresh one.
MAX_AGE: Final = 3600
MAX_AHEAD: Final = 300
RENEW_AGE: Final = 1800

_HEAD = struct.Struct("!B3sI")  # version, reserved, timestamp


def valid_length(length: int) -> bool:
    """RFC 7873 §5.2.2: a COOKIE option is a client cookie alone (8 octets) or followed by
    a server cookie of 8 to 32; any other length is malformed (FORMERR)."""
    return length == CLIENT_COOKIE_LEN or 16 <= length <= 40


def address_octets(client: str) -> bytes:
    """The client's address as the hash takes it: 4 octets for IPv4, 16 for IPv6."""
    family = socket.AF_INET6 if ":" in client else socket.AF_INET
    return socket.inet_pton(family, client)


def siphash24_digest(key: bytes, data: bytes) -> bytes:
    """SipHash-2-4 of ``data`` under a 16-octet ``key``: its 8 output octets as the
    reference implementation writes them (little-endian), which is what RFC 9018 puts on
    the wire."""
    digest: bytes = siphash24(data, key=key).digest()
    return digest


def server_cookie(
    secret: bytes, client_cookie: bytes, address: bytes, timestamp: int, reserved: bytes = b"\0\0\0"
) -> bytes:
    """RFC 9018 §4.2's version-1 server cookie. ``reserved`` is zero in what we make; when
    checking one we hash what the client sent (Appendix A.3)."""
    head = _HEAD.pack(VERSION, reserved, timestamp & 0xFFFFFFFF)
    return head + siphash24_digest(secret, client_cookie + head + address)


def _age(timestamp: int, now: int) -> int:
    """Seconds from ``timestamp`` to ``now`` in serial-number arithmetic (RFC 1982), as
    RFC 9018 §4.3 asks: a cookie stamped just before 2106's wrap is not 136 years old."""
    age = (now - timestamp) & 0xFFFFFFFF
    return age - (1 << 32) if age >= 1 << 31 else age


class ServerCookies:
    """The agent's server secret (and the one before it, during a rollover) and what a
    query's COOKIE option earns.

    RFC 9018 §4.4: after a new secret is put in place, cookies made with the previous one
    are still taken (until they expire, an hour at most), and each is replaced with one
    made with the new secret; so agents behind one address can change their secret one
    after another without a client losing its standing.
    """

    __slots__ = ("previous", "secret")

    def __init__(self, secret: bytes, previous: bytes | None = None) -> None:
        for key in (secret, previous):
            if key is not None and len(key) != SECRET_LEN:
                raise ValueError(f"a cookie secret is {SECRET_LEN} octets, not {len(key)}")
        self.secret = secret
        self.previous = previous

    def rotate(self, secret: bytes) -> None:
        """Make ``secret`` the current one; the current becomes the previous (still taken)."""
        if secret != self.secret:
            ServerCookies(secret)  # the length check
            self.previous, self.secret = self.secret, secret

    def verdict(self, option: bytes, client: str, now: int) -> tuple[bool, bytes]:
        """(whether the option's server cookie is ours, valid and in time; the COOKIE
        option data for the reply: the client cookie and a server cookie for it).

        ``option`` has a valid length already (``valid_length``, checked when the query
        was parsed). A valid cookie less than half an hour old made with the current
        secret is handed back as it is; anything else gets a fresh one (RFC 9018 §4.3).
        """
        client_cookie = option[:CLIENT_COOKIE_LEN]
        address = address_octets(client)
        if len(option) == CLIENT_COOKIE_LEN + SERVER_COOKIE_LEN and option[8] == VERSION:
            theirs = option[8:]
            _version, reserved, timestamp = _HEAD.unpack_from(theirs)
            age = _age(timestamp, now)
            if -MAX_AHEAD <= age <= MAX_AGE:
                for key in (self.secret, self.previous):
                    if key is None:
                        continue
                    expected = server_cookie(key, client_cookie, address, timestamp, reserved)
                    if hmac.compare_digest(expected, theirs):
                        if key is self.secret and age < RENEW_AGE and reserved == b"\0\0\0":
                            return True, option
                        return True, client_cookie + self._fresh(client_cookie, address, now)
        return False, client_cookie + self._fresh(client_cookie, address, now)

    def _fresh(self, client_cookie: bytes, address: bytes, now: int) -> bytes:
        return server_cookie(self.secret, client_cookie, address, now)


class ClientCookies:
    """Our side as a client of the upstreams (``--upstream-cookies``, RFC 7873 §5.1, §6).

    The client cookie for a server is SipHash-2-4 of its address under a client secret
    (RFC 7873 §6 without our own address, as RFC 9018 §3 updates it: behind NAT we do not
    know it), so each upstream gets its own and none can track us to another. Each server
    cookie an upstream hands us is kept and sent back, the last one seen per upstream.

    A reply whose COOKIE option does not carry our client cookie was not sent in answer
    to our query: ``learn`` says so and the caller drops it as forged, a check a forger
    must pass on top of the ID, the port and the 0x20 case, and one that needs 64 bits
    it never saw.
    """

    __slots__ = ("_client", "_server", "secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_LEN:
            raise ValueError(f"a cookie secret is {SECRET_LEN} octets, not {len(secret)}")
        self.secret = secret
        self._client: dict[str, bytes] = {}  # server address -> our client cookie for it
        self._server: dict[str, bytes] = {}  # server address -> its last server cookie

    def client_cookie(self, server: str) -> bytes:
        cookie = self._client.get(server)
        if cookie is None:
            cookie = self._client[server] = siphash24_digest(self.secret, address_octets(server))
        return cookie

    def option(self, server: str) -> bytes:
        """The COOKIE option data for a query to ``server``: our client cookie and its
        server cookie when we have one (RFC 7873 §5.1)."""
        return self.client_cookie(server) + self._server.get(server, b"")

    def learn(self, server: str, option: bytes | None) -> bool:
        """Take in a reply's COOKIE option (None: it had none); False when the reply is
        forged: its client cookie is not ours. A server cookie of a length RFC 7873 §4.2
        forbids is not kept (the reply is not refused for it: it did carry our cookie)."""
        if option is None:
            return True  # a server that does not do cookies (RFC 7873 §5.3)
        if not hmac.compare_digest(option[:CLIENT_COOKIE_LEN], self.client_cookie(server)):
            return False
        if valid_length(len(option)) and len(option) > CLIENT_COOKIE_LEN:
            self._server[server] = option[CLIENT_COOKIE_LEN:]
        return True


def parse_secret(text: str) -> bytes:
    """A secret as ``--cookie-secret-file`` holds it: 32 hex digits (16 octets), blanks
    around them ignored; ValueError says what is wrong."""
    digits = text.strip()
    try:
        secret = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"not hex digits: expected {SECRET_LEN * 2} of them") from None
    if len(secret) != SECRET_LEN:
        raise ValueError(
            f"{len(secret)} octets, expected {SECRET_LEN} ({SECRET_LEN * 2} hex digits)"
        )
    return secret
