"""Who an agent is, from the X.509-SVID it presents: ``spiffe://TRUST_DOMAIN/agent/NODE``.

Pure: it reads a certificate the TLS layer already verified (signed by the mesh CA, in its
validity period) and says which node it names, or why it names none. Whether the
certificate is still good (issued by this controller, not revoked) is the registry's to
say (controller/agent_certs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from controller import ca

AGENT_PATH = "agent"  # spiffe://TD/agent/NODE
MAX_NODE_NAME = 128  # the agent id is the node name, and agents.agent_id is VARCHAR(128)


class NotAnAgent(ValueError):
    """The certificate is none of this mesh's agent identities (the message says why)."""


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """An agent as its certificate names it; its agent id is its node name."""

    node_name: str
    spiffe_id: str
    serial: str  # hex, lower case: the key of agent_certificates
    not_after: datetime

    @property
    def agent_id(self) -> str:
        return self.node_name


def agent_spiffe_id(trust_domain: str, node_name: str) -> str:
    """The SPIFFE ID of a node's agent; ValueError names what is wrong with the name."""
    check_node_name(node_name)
    return ca.spiffe_id(trust_domain, AGENT_PATH, node_name)


def check_node_name(node_name: str) -> str:
    if not 1 <= len(node_name) <= MAX_NODE_NAME:
        raise ValueError(f"a node name is 1-{MAX_NODE_NAME} characters")
    try:
        ca.spiffe_id(ca.DEFAULT_TRUST_DOMAIN, AGENT_PATH, node_name)
    except ValueError:
        raise ValueError(
            f"{node_name!r} cannot be a node name: letters, digits, '.', '-', '_' only"
        ) from None
    return node_name


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def identity_of(certificate: x509.Certificate, trust_domain: str) -> AgentIdentity:
    """The agent the certificate names in ``trust_domain``; NotAnAgent otherwise."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise NotAnAgent("the certificate has no SPIFFE ID (no URI SAN)") from None
    uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise NotAnAgent(f"an X.509-SVID has exactly one URI SAN, this one has {len(uris)}")
    prefix = f"spiffe://{trust_domain}/{AGENT_PATH}/"
    spiffe = uris[0]
    node = spiffe.removeprefix(prefix)
    if not spiffe.startswith(prefix) or "/" in node:
        raise NotAnAgent(f"{spiffe!r} is not an agent of the trust domain {trust_domain!r}")
    try:
        check_node_name(node)
    except ValueError as error:
        raise NotAnAgent(str(error)) from None
    return AgentIdentity(node, spiffe, serial_hex(certificate), certificate.not_valid_after_utc)


def identity_of_pem(pem: str, trust_domain: str) -> AgentIdentity:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as error:
        raise NotAnAgent(f"not a certificate: {error}") from None
    return identity_of(certificate, trust_domain)
