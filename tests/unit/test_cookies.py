"""DNS Cookies' pure core (dnsmesh/cookies.py) and their wire handling in dnsmesh/dnswire.py:
RFC 9018 Appendix A's vectors, the time window, rollover, and the COOKIE option's parse."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from dnsmesh import dnswire
from dnsmesh.cookies import (
    MAX_AGE,
    MAX_AHEAD,
    OPTION_COOKIE,
    RENEW_AGE,
    ClientCookies,
    ServerCookies,
    address_octets,
    parse_secret,
    server_cookie,
    siphash24_digest,
    valid_length,
)
from dnsmesh.dnsforward import build_upstream_query, response_option

# RFC 9018 Appendix A.
SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
A1_CLIENT = "198.51.100.100"
A1_CLIENT_COOKIE = bytes.fromhex("2464c4abcf10c957")
A1_NOW = 1559731985
A1_REPLY = bytes.fromhex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")


def test_siphash24_matches_the_reference_vectors() -> None:
    # The SipHash paper's Appendix A (key 00..0f, message 00..0e) and the reference
    # implementation's vectors.h for the empty and one-octet messages.
    key = bytes(range(16))
    assert siphash24_digest(key, bytes(range(15))) == (0xA129CA6149BE45E5).to_bytes(8, "little")
    assert siphash24_digest(key, b"").hex() == "310e0edd47db6f72"
    assert siphash24_digest(key, b"\x00").hex() == "fd67dc93c539f874"


@pytest.mark.parametrize(
    ("secret", "client_cookie", "client", "now", "expected"),
    [
        # A.1: a client's first query, a client cookie alone.
        (SECRET, "2464c4abcf10c957", A1_CLIENT, A1_NOW, "010000005cf79f111f8130c3eee29480"),
        # A.2: the same client 40 minutes later, renewed.
        (SECRET, "2464c4abcf10c957", A1_CLIENT, 1559734385, "010000005cf7a871d4a564a1442aca77"),
        # A.3: another client.
        (
            SECRET,
            "fc93fc62807ddb86",
            "203.0.113.203",
            1559734700,
            "010000005cf7a9acf73a7810aca2381e",
        ),
        # A.4: an IPv6 client, after the secret changed.
        (
            bytes.fromhex("445536bcd2513298075a5d379663c962"),
            "22681ab97d52c298",
            "2001:db8:220:1:59de:d0f4:8769:82b8",
            1559741961,
            "010000005cf7c609a6bb79d16625507a",
        ),
    ],
)
def test_server_cookie_matches_rfc9018_appendix_a(
    secret: bytes, client_cookie: str, client: str, now: int, expected: str
) -> None:
    made = server_cookie(secret, bytes.fromhex(client_cookie), address_octets(client), now)
    assert made.hex() == expected


def test_a_client_cookie_alone_gets_a_new_server_cookie() -> None:
    proven, option = ServerCookies(SECRET).verdict(A1_CLIENT_COOKIE, A1_CLIENT, A1_NOW)
    assert not proven
    assert option == A1_REPLY


def test_a_fresh_valid_cookie_is_proof_and_handed_back_as_it_is() -> None:
    cookies = ServerCookies(SECRET)
    for later in (0, 1, RENEW_AGE - 1):
        assert cookies.verdict(A1_REPLY, A1_CLIENT, A1_NOW + later) == (True, A1_REPLY)


def test_a_valid_cookie_over_half_an_hour_old_is_proof_and_renewed() -> None:
    # A.2: 40 minutes after A.1, the client sends the cookie back and gets a new one.
    proven, option = ServerCookies(SECRET).verdict(A1_REPLY, A1_CLIENT, 1559734385)
    assert proven
    assert option.hex() == "2464c4abcf10c957010000005cf7a871d4a564a1442aca77"


@pytest.mark.parametrize(
    ("offset", "proven"),
    [
        (MAX_AGE, True),  # an hour old: the last second it holds (RFC 9018 §4.3)
        (MAX_AGE + 1, False),
        (-MAX_AHEAD, True),  # five minutes ahead: clocks of agents sharing a secret differ
        (-MAX_AHEAD - 1, False),
    ],
)
def test_the_time_window_is_an_hour_back_and_five_minutes_ahead(offset: int, proven: bool) -> None:
    now = A1_NOW + offset
    verdict, option = ServerCookies(SECRET).verdict(A1_REPLY, A1_CLIENT, now)
    assert verdict is proven
    fresh = A1_CLIENT_COOKIE + server_cookie(
        SECRET, A1_CLIENT_COOKIE, address_octets(A1_CLIENT), now
    )
    # Ahead but in time: it is young, so it is handed back; otherwise a fresh one.
    assert option == (A1_REPLY if proven and offset < 0 else fresh)


def test_the_window_is_serial_arithmetic_across_the_timestamp_wrap() -> None:
    stamped = 0xFFFFFF00
    option = A1_CLIENT_COOKIE + server_cookie(
        SECRET, A1_CLIENT_COOKIE, address_octets(A1_CLIENT), stamped
    )
    assert ServerCookies(SECRET).verdict(option, A1_CLIENT, (stamped + 600) % 2**32)[0]


@pytest.mark.parametrize(
    "option",
    [
        A1_REPLY[:-1] + bytes([A1_REPLY[-1] ^ 1]),  # forged: one bit of the hash
        A1_REPLY[:12] + b"\x5c\xf7\x9f\x12" + A1_REPLY[16:],  # the timestamp moved
        A1_CLIENT_COOKIE[:7] + b"\x00" + A1_REPLY[8:],  # another client cookie
        A1_CLIENT_COOKIE + b"\x02" + A1_REPLY[9:],  # a version we do not make
        A1_CLIENT_COOKIE + bytes(8),  # an 8-octet server cookie: not RFC 9018's
    ],
)
def test_a_cookie_not_ours_is_no_proof_and_gets_a_fresh_one(option: bytes) -> None:
    proven, reply = ServerCookies(SECRET).verdict(option, A1_CLIENT, A1_NOW + 10)
    assert not proven
    assert reply[:8] == option[:8]
    assert ServerCookies(SECRET).verdict(reply, A1_CLIENT, A1_NOW + 10) == (True, reply)


def test_a_cookie_is_bound_to_the_address_it_was_made_for() -> None:
    assert not ServerCookies(SECRET).verdict(A1_REPLY, "198.51.100.101", A1_NOW)[0]


def test_reserved_octets_the_client_sent_are_hashed_and_then_cleared() -> None:
    # A.3: the client's cookie carries reserved octets abcdef; it verifies (at its own
    # time) and the reply is one of ours, with them zero.
    option = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    proven, reply = ServerCookies(SECRET).verdict(option, "203.0.113.203", 0x5CF78F71 + 60)
    assert proven
    assert reply[9:12] == b"\0\0\0"


def test_after_a_rotation_the_previous_secret_is_still_taken_and_replaced() -> None:
    # A.4: a cookie from the old secret; the reply is made with the new one.
    old = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
    new = bytes.fromhex("445536bcd2513298075a5d379663c962")
    cookies = ServerCookies(old)
    cookies.rotate(new)
    held = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    proven, reply = cookies.verdict(held, "2001:db8:220:1:59de:d0f4:8769:82b8", 1559741961)
    assert proven
    assert reply.hex() == "22681ab97d52c298010000005cf7c609a6bb79d16625507a"
    cookies.rotate(bytes(16))  # two rotations on, the old secret is forgotten
    assert not cookies.verdict(held, "2001:db8:220:1:59de:d0f4:8769:82b8", 1559741961)[0]


def test_rotating_to_the_same_secret_keeps_the_previous_one() -> None:
    cookies = ServerCookies(SECRET, previous=bytes(16))
    cookies.rotate(SECRET)
    assert cookies.previous == bytes(16)


def test_a_secret_is_sixteen_octets() -> None:
    with pytest.raises(ValueError, match="16 octets"):
        ServerCookies(b"short")
    with pytest.raises(ValueError, match="16 octets"):
        ServerCookies(SECRET).rotate(bytes(15))


@pytest.mark.parametrize(
    ("text", "error"),
    [("e5e973e5a6b2a43f48e7dc849e37bfcf\n", None), ("e5e9", "2 octets"), ("zz" * 16, "not hex")],
)
def test_parse_secret(text: str, error: str | None) -> None:
    if error is None:
        assert parse_secret(text) == SECRET
    else:
        with pytest.raises(ValueError, match=error):
            parse_secret(text)


@pytest.mark.parametrize("length", range(0, 45))
def test_cookie_lengths_rfc7873_allows(length: int) -> None:
    assert valid_length(length) is (length == 8 or 16 <= length <= 40)


def _query(*options: dns.edns.Option) -> bytes:
    return dns.message.make_query(
        "door.mesh.test", "A", use_edns=0, options=list(options)
    ).to_wire()


def test_a_query_with_a_cookie_is_raised_with_the_first_option_and_a_plain_copy() -> None:
    first = dns.edns.GenericOption(OPTION_COOKIE, A1_REPLY)
    second = dns.edns.GenericOption(OPTION_COOKIE, b"x" * 8)
    ede = dns.edns.EDEOption(3)
    for _ in range(2):  # never memoised: the second parse raises too
        with pytest.raises(dnswire.WithCookie) as caught:
            dnswire.parse_query(_query(first, ede, second))
    found = caught.value
    assert found.cookie == A1_REPLY
    # Without its COOKIE options, the packet parses to the same query.
    assert dnswire.parse_query(found.plain) == found.query
    assert [o.otype for o in dns.message.from_wire(found.plain).options] == [ede.otype]
    query, cookie = dnswire.parse_query_and_cookie(_query(first))
    assert (
        cookie == A1_REPLY and query.qname == found.query.qname == b"\x04door\x04mesh\x04test\x00"
    )
    plain = dns.message.make_query("door.mesh.test", "A").to_wire()
    assert dnswire.parse_query_and_cookie(plain) == (dnswire.parse_query(plain), None)


@pytest.mark.parametrize("length", [0, 7, 9, 15, 41])
def test_a_malformed_cookie_option_is_formerr_with_the_question(length: int) -> None:
    with pytest.raises(dnswire.MalformedQuery) as caught:
        dnswire.parse_query(_query(dns.edns.GenericOption(OPTION_COOKIE, b"c" * length)))
    assert caught.value.reply is not None
    reply = dns.message.from_wire(caught.value.reply)
    assert reply.rcode() == dns.rcode.FORMERR
    assert str(reply.question[0].name) == "door.mesh.test."
    assert reply.edns == 0


def test_add_option_extends_the_responses_opt() -> None:
    query = dnswire.parse_query(_query())
    response = dnswire.build_response(query, dnswire.RCODE_NOERROR, ede=(dnswire.EDE_OTHER, "x"))
    parsed = dns.message.from_wire(dnswire.add_option(response, OPTION_COOKIE, A1_REPLY))
    assert [option.otype for option in parsed.options] == [dnswire.OPTION_EDE, OPTION_COOKIE]
    cookie = parsed.options[1]
    assert isinstance(cookie, dns.edns.CookieOption)
    assert cookie.client + cookie.server == A1_REPLY


def test_add_option_gives_a_response_without_opt_one() -> None:
    plain = dnswire.parse_query(dns.message.make_query("door.mesh.test", "A").to_wire())
    response = dnswire.build_response(plain, dnswire.RCODE_NOERROR)
    parsed = dns.message.from_wire(dnswire.add_option(response, OPTION_COOKIE, A1_REPLY))
    assert parsed.edns == 0
    assert [option.otype for option in parsed.options] == [OPTION_COOKIE]


def test_client_cookies_are_per_server_and_learn_the_server_cookie() -> None:
    cookies = ClientCookies(SECRET)
    ours = cookies.client_cookie("192.0.2.53")
    assert len(ours) == 8 and ours == cookies.client_cookie("192.0.2.53")
    assert ours != cookies.client_cookie("192.0.2.54") != cookies.client_cookie("2001:db8::53")
    assert ours != ClientCookies(bytes(16)).client_cookie("192.0.2.53")  # the secret counts
    assert cookies.option("192.0.2.53") == ours  # no server cookie yet
    assert cookies.learn("192.0.2.53", None)  # a server without cookies: taken
    assert cookies.learn("192.0.2.53", ours + b"s" * 16)
    assert cookies.option("192.0.2.53") == ours + b"s" * 16
    assert cookies.option("192.0.2.54") == cookies.client_cookie("192.0.2.54")
    # Another client cookie: forged, and nothing learned from it.
    assert not cookies.learn("192.0.2.53", b"forged!!" + b"t" * 16)
    assert cookies.option("192.0.2.53") == ours + b"s" * 16
    # Ours with a server cookie of a length RFC 7873 forbids: taken, not kept.
    assert cookies.learn("192.0.2.53", ours + b"u" * 5)
    assert cookies.option("192.0.2.53") == ours + b"s" * 16


def test_the_upstream_query_carries_the_cookie_and_the_reply_s_is_found() -> None:
    wire = build_upstream_query(b"\x04door\x04mesh\x04test\x00", 1, 1, 0x1234, A1_REPLY)
    query = dns.message.from_wire(wire)
    cookie = query.options[0]
    assert isinstance(cookie, dns.edns.CookieOption)
    assert cookie.client + cookie.server == A1_REPLY
    assert query.payload == 1232 and query.flags & dns.flags.RD
    plain = build_upstream_query(b"\x04door\x04mesh\x04test\x00", 1, 1, 0x1234)
    assert dns.message.from_wire(plain).options == ()
    reply = dns.message.make_response(query)
    reply.use_edns(
        0, options=[dns.edns.EDEOption(3), dns.edns.GenericOption(OPTION_COOKIE, A1_REPLY)]
    )
    assert response_option(reply.to_wire(), OPTION_COOKIE) == A1_REPLY
    assert response_option(dns.message.make_response(query).to_wire(), 15) is None
    assert response_option(b"\x00" * 5, OPTION_COOKIE) is None
