"""The certificate failure is found however deep a TLS client wrapped it."""

from __future__ import annotations

import ssl

from dnsmesh.tlserrors import certificate_error


def _raised_from(inner: BaseException, *, as_context: bool) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            if as_context:
                raise ConnectionError("handshake failed")  # noqa: B904 - the context is the point
            raise ConnectionError("handshake failed") from exc
    except ConnectionError as outer:
        return outer


def test_a_wrapped_verification_failure_is_found_as_cause_or_context() -> None:
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    for as_context in (False, True):
        outer = _raised_from(refused, as_context=as_context)
        assert certificate_error(RuntimeError("outermost")) is None
        wrapped = RuntimeError("outermost")
        wrapped.__cause__ = outer
        assert certificate_error(wrapped) is refused
    assert certificate_error(refused) is refused


def test_other_tls_and_network_errors_are_not_certificate_failures() -> None:
    outer = _raised_from(ssl.SSLError(1, "wrong version number"), as_context=False)
    assert certificate_error(outer) is None
    assert certificate_error(ConnectionRefusedError()) is None
