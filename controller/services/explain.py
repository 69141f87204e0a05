"""Explain as the controller sees it: the stored policies, drains, down set and a node's reports.

One read transaction gathers what the controller knows; the answer is made by the pure
dnsmesh.explain from the policy compiled as an agent would compile it with that state
(drains, the quorum's down set and, with a node, the ejections that node last reported).
Only the agent knows its ejections as of now and its latency weights: its own admin
``/explain`` tells those.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import AgentRow, EndpointHealthRow
from controller.db.session import Database
from controller.errors import NotFound
from controller.repositories.drains import read_drains
from controller.repositories.health import read_down
from controller.repositories.policies import policy_documents
from controller.repositories.revision import current_revision
from controller.repositories.rollouts import rollout_rows
from controller.repositories.scaling import read_counts
from dnsmesh import explain as ex
from dnsmesh.drains import DrainSet
from dnsmesh.health import EndpointHealth
from dnsmesh.policy import Policy, check_policy_set, parse_policy
from dnsmesh.snapshot import NO_CONTEXT, CompileContext, compile_snapshot

SOURCE = "controller"
# What a node's last report of an ejected endpoint stands for in decide_policy: ejected.
_REPORTED_EJECTED = EndpointHealth(ejected_until=float("inf"), samples=1)


class BadClient(ValueError):
    """The client is not an IP address (422 naming ``client``)."""


def client_address(text: str) -> str:
    """``text`` as the canonical address text the agent sees a client as."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise BadClient(f"client {text!r} is not an IPv4 or IPv6 address") from None


@dataclass(frozen=True, slots=True)
class _State:
    revision: int
    policies: list[Policy]
    down: frozenset[str]
    drains: DrainSet
    node: dict[str, Any] | None
    ejected: frozenset[str]
    rollouts: dict[str, tuple[int, int, str]]  # policy -> (share, step, state)
    slice_scale: dict[str, dict[str, int]]  # policy -> scaled slice id -> count
    # The node's labels as its agent last said hello with (node-label slices); none
    # without a node: such slices are left out, as on a node without those labels.
    context: CompileContext = NO_CONTEXT


class ExplainService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def explain(self, name: str, client: str, node: str | None = None) -> dict[str, Any]:
        """GET /v1/explain: NotFound for no such policy (by name or DNS name) or node."""
        state = self.db.read(lambda session: self._state(session, node))
        policy = next((p for p in state.policies if p.name == name), None)
        debug_label: str | None = None
        if policy is None:
            # A DNS name: the snapshot's own lookup decides which policy answers it (a
            # slice's debug name included). Only then is every policy compiled (a name is
            # found without compiling any).
            snapshot = compile_snapshot(state.policies, state.revision, context=state.context)
            found = ex.resolve(snapshot, name)
            if found is None:
                raise NotFound(f"no policy is called or answers {name!r}")
            policy = found.policy
            debug_label = found.debug_label
        return self._explain(policy, client, state, debug_label).to_json()

    def what_if(self, document: object, client: str, node: str | None = None) -> dict[str, Any]:
        """POST /v1/explain: the proposed ``document`` against the policy of that name as
        stored (None when it is new); PolicyError when it does not validate or clashes
        with another policy's name or domain."""
        proposed = parse_policy(document)
        state = self.db.read(lambda session: self._state(session, node))
        current = next((p for p in state.policies if p.name == proposed.name), None)
        others = [p for p in state.policies if p.name != proposed.name]
        check_policy_set([*others, proposed])
        before = self._explain(current, client, state) if current is not None else None
        return ex.what_if(before, self._explain(proposed, client, state))

    def _explain(
        self, policy: Policy, client: str, state: _State, debug_label: str | None = None
    ) -> ex.Explanation:
        drained = state.drains.of(policy.name)
        health = dict.fromkeys(state.ejected, _REPORTED_EJECTED)
        canary = policy.spec.canary
        row = state.rollouts.get(policy.name) if canary is not None else None
        # As the agents compile it: a controller policy with a canary and no rollout yet
        # gives its canary group nothing.
        share = None if canary is None else (row[0] if row is not None else 0)
        compiled, all_down = ex.compile_with_state(
            policy,
            state.revision,
            health=health,
            down=state.down,
            drained=drained,
            canary_share=share,
            context=state.context,
            debug_label=debug_label,
            slice_counts=state.slice_scale.get(policy.name),
        )
        explanation = ex.explain(
            compiled,
            client,
            source=SOURCE,
            drained=drained,
            down=state.down,
            ejected=state.ejected,
            all_down=all_down,
            node=state.node,
        )
        if state.node is None and any(s.match.node_labels for s in policy.spec.slices):
            note = "slices with match.node_labels are left out: give a node to include them"
            explanation = replace(explanation, notes=(*explanation.notes, note))
        if canary is None:
            return explanation
        rollout: dict[str, Any] = {"group": canary.group, "share": share, "state": None}
        if row is not None:
            rollout.update(step=row[1], state=row[2], steps=list(canary.steps))
        return replace(explanation, rollout=rollout)

    def _state(self, session: Session, node: str | None) -> _State:
        node_json: dict[str, Any] | None = None
        ejected: frozenset[str] = frozenset()
        context = NO_CONTEXT
        if node is not None:
            agent = _agent_on(session, node)
            context = CompileContext(dict(agent.labels))
            reports = list(
                session.scalars(
                    select(EndpointHealthRow).where(EndpointHealthRow.agent_id == agent.agent_id)
                )
            )
            ejected = frozenset(r.address for r in reports if r.state == "ejected")
            node_json = {
                "name": agent.node_name,
                "agent_id": agent.agent_id,
                "labels": dict(agent.labels),
                "connected": agent.connected,
                "applied_revision": agent.applied_revision,
                "ejected": sorted(ejected),  # as of its last report
            }
        return _State(
            revision=current_revision(session),
            policies=[parse_policy(doc) for doc in policy_documents(session, None)],
            down=frozenset(read_down(session)),
            drains=read_drains(session, self.db.clock()),
            node=node_json,
            ejected=ejected,
            rollouts={r.policy_name: (r.share, r.step, r.state) for r in rollout_rows(session)},
            context=context,
            slice_scale=read_counts(session),
        )


def _agent_on(session: Session, node: str) -> AgentRow:
    """The agent of node ``node`` (the most recently seen, if it ran several)."""
    agent = session.scalars(
        select(AgentRow).where(AgentRow.node_name == node).order_by(AgentRow.last_seen.desc())
    ).first()
    if agent is None:
        raise NotFound(f"no agent has reported from node {node!r}")
    return agent
