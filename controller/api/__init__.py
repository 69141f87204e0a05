"""The controller's REST API (FastAPI); ``create_app(Database)`` builds it.

Every route but /healthz, /readyz, /v1/ca, /openapi.json and the UI's files (/ui/) needs
``Authorization: Bearer dnsm_...``, except for agents: over TLS they show their client
certificate instead (the join flow: controller/api/identity.py, which lists /v1/join,
/v1/renew and /v1/ca/refusals).
Bodies are JSON; a policy body is the same document as one YAML policy document.

Policies (read: viewer, editor, admin, agent; write: editor, admin)
    GET    /v1/policies[?label=K=V&label=K2=V2]  200 {"revision": R, "items": [policy, ...]}
                                                   (by name; the items are the state at
                                                   global revision R, read in one snapshot)
    POST   /v1/policies                          201 policy (+ETag, Location); 409 name taken
    GET    /v1/policies/{name}                   200 policy (+ETag)
    PUT    /v1/policies/{name}                   201 created | 200 replaced, policy (+ETag).
                                                   An unchanged document is 200 and no new
                                                   revision. Body metadata.name must equal
                                                   {name} (else 422); metadata.revision in a
                                                   body is ignored.
    DELETE /v1/policies/{name}                   200 {"deleted": name, "revision": R}
    POST   /v1/apply [policy, ...] [?dry_run=true&force=true&prune=true&selector=K=V,K2=V2]
                                                 a set, in one transaction, as one revision,
                                                   all or none (what `dnsmesh apply -f` sends):
                                                   200 {"revision", "applied", "dry_run",
                                                   "items": [{"index", "name", "outcome":
                                                   created|configured|unchanged|pruned,
                                                   "error": null}]}; every document is
                                                   validated (and the set: a name or domain
                                                   twice) before anything is read; when any
                                                   is refused, nothing is stored: 409 (422 when
                                                   every refusal is invalid_policy)
                                                   {"error": {"code": "apply_refused",
                                                   "fields": [{"path": "[I].spec..."}]}, the
                                                   same keys, refused items' "error" the error
                                                   object}. prune=true: the policies the list
                                                   does not name are deleted (first, so a
                                                   domain can move to a new policy), only
                                                   those matching selector (Kubernetes'
                                                   equality form: K=V or K==V, comma-joined;
                                                   anything else, or selector without prune,
                                                   is 422 naming "selector"); pruned items
                                                   come after the list's. If-Match: the mesh
                                                   revision the set was planned against.
  ?dry_run=true on POST, PUT and DELETE (policies, slices, /v1/apply): the write's validation
  and conflict checks run in full (the same status and error as the write), then nothing
  is stored:
  no revision, no change, no audit row, no push. The answer carries ``Dnsmesh-Dry-Run:
  true`` and the body the write would return (metadata.revision: the revision it would
  have taken), no ETag.
  A stored policy carries metadata.revision (the revision of its last change); its ETag is
  that number quoted ("42"). If-Match: "42" (or *) on PUT/DELETE (and slice writes) makes
  the write conditional: 412 when the policy is at another revision or does not exist.

Slices (the slice manager; each change is a change of the whole policy and is validated as
the resulting policy; ETag/If-Match are the policy's revision)
    GET    /v1/policies/{name}/slices            200 {"policy": name, "revision": R,
                                                      "items": [slice, ...]}
    POST   /v1/policies/{name}/slices            201 slice (appended last); 409 id taken
    GET    /v1/policies/{name}/slices/{id}       200 slice
    PUT    /v1/policies/{name}/slices/{id}       200 replaced in place | 201 appended; body id
                                                   may be omitted, else must equal {id}; an
                                                   unchanged slice is 200 and no new revision
    DELETE /v1/policies/{name}/slices/{id}       200 {"deleted": id, "policy": name, "revision": R}

Tokens (admin)
    POST   /v1/tokens {"name", "role", "ttl"?}   201 {"name","role","prefix","created_at",
                                                   "created_by","expires_at","token"}: the
                                                   only time the secret is shown; 409 name
                                                   taken. ttl: "90s", "30m", "1h", "7d",
                                                   "2w" (at most 3650d), else 422; without
                                                   it expires_at is null (until revoked)
    GET    /v1/tokens                            200 {"items": [{name, role, prefix,
                                                   created_at, created_by, expires_at}]}
    DELETE /v1/tokens/{name}                     200 {"revoked": name}
    GET    /v1/whoami                            (any role) 200 {"name", "role", "expires_at",
                                                   "may": {"policies:read", "policies:write",
                                                   "audit:read", "tokens:manage": bool}}

Events (viewer, editor, admin; controller/api/events.py)
    GET    /v1/events                            200 text/event-stream: ``event: revision``
                                                   data {"revision": R}, now and at every
                                                   committed revision; ``event: goodbye``
                                                   when the token stops being valid

Audit (viewer, editor, admin)
    GET    /v1/audit?limit=50&before=ID          200 {"items": [{"id","at","actor","operation",
                                                   "target","revision","before","after"}],
                                                   "next_before": ID | null}, newest first.
  operation: policy.create|policy.update|policy.delete|slice.create|slice.update|
  slice.delete|token.create|token.revoke|endpoints.down|endpoint.drain|endpoint.undrain|
  endpoint.drain_refused|write.refused|agent.join|agent.revoke; actor is the token
  name ("cli" for the CLI, "quorum" for a down-set change: target down-set, before
  {"down": [...]}, after {"down", "marked", "cleared", "votes": {address: {voters,
  failing}}}).
  write.refused: a write (not GET/HEAD) refused with 401/403; actor the token's name (403),
  "unknown-token" or "anonymous" (401); target the path; after {"method", "path", "status",
  "reason", "source", "token_prefix"?, "dropped"?}. At most 20 rows a second per source
  (bursts of 50); "dropped" counts the refusals of that source left out since its last row
  (controller/api/refusals.py).

Agents (the push protocol, HTTP polling and close codes: controller/api/agents.py)
    GET    /v1/agents/stream                     WebSocket for agents (agent, admin); a
                                                   refused token is an HTTP 401/403 before
                                                   the upgrade
    GET    /v1/changes?since=R&wait=S[&agent_id=ID]
                                                 (agent, admin) 200 snapshot|delta message
                                                   newer than R (R=0: snapshot), or 204
                                                   after S seconds (0-30) of nothing new
    POST   /v1/agents/{id}/ack {"node_name", "labels"?, "software"?, "revision": R,
                                "nack"?: {"revision", "reason"}, "local"?: [{name,
                                domain, source}], "shadowed"?: [{name, reason}]}
                                                 (agent, admin) 200 {"agent_id",
                                                   "applied_revision"}: a polling agent's
                                                   hello and ACK/NACK, recorded on return
    GET    /v1/agents[?name=N&label=K=V]         (viewer, editor, admin) 200 {"revision": R,
                                                   "items": [{agent_id, node_name, labels,
                                                   software, transport (websocket|poll),
                                                   connected, replica, first_seen,
                                                   connected_at, disconnected_at, last_seen,
                                                   applied_revision, last_nack: {revision,
                                                   reason, at} | null, local_policies:
                                                   [{name, domain, source}] | null,
                                                   shadowed: [{name, reason}] | null}]}
                                                   by agent_id (null: never reported);
                                                   name: the agent id or node name;
                                                   label: repeat to AND
    DELETE /v1/agents/{id}                       (editor, admin) 200 {"deleted": id}: forget
                                                   a node that is gone (its row and probe
                                                   reports); 404 unknown; 409 agent_connected
                                                   while it is connected (stop it first)
    GET    /v1/revisions/{r}?limit=100           (viewer, editor, admin) 200 {"revision": r,
                                                   "current_revision", "total": connected
                                                   agents, "converged": how many applied >= r,
                                                   "pending": [agent, ...] (the first `limit`
                                                   by id of the total - converged behind)};
                                                   404 if r is not committed yet
  connected: the agent's connection is open (WebSocket) or it reported within the last
  ~60 s (polling), and its replica refreshed it within the last ~60 s.
    POST   /v1/agents/{id}/report {"endpoints": [...]}
                                                 (agent, admin) 200 {"agent_id", "endpoints",
                                                   "down"}: a polling agent's probe report

Endpoint health (the quorum rule: dnsmesh/quorum.py; shapes: controller/api/endpoints.py)
    GET    /v1/endpoints[?policy=NAME&label=K=V] (viewer, editor, admin) 200 {"revision",
                                                   "down", "rule", "items": [{address,
                                                   policies, status (down|failing|healthy|
                                                   unknown), voters, failing, latency_ms,
                                                   loss, admin_state (up|drained|
                                                   partly-drained), drains, agents:
                                                   [per-agent report]}]};
                                                   label: the endpoints of the policies with
                                                   those labels (repeat to AND)
    POST   /v1/endpoints/{address}/drain[?force=true] {"policy"?, "for"?}
                                                 (editor, admin) 201 {"revision", "drain",
                                                   "forced_past"}; 200 revision null: the same
                                                   drain again; 409 safety_min_endpoints |
                                                   safety_min_weight_percent (unless force);
                                                   422 a bad address, one no policy has, a
                                                   bad "for"; 404 no such policy
    DELETE /v1/endpoints/{address}/drain[?policy=NAME]
                                                 (editor, admin) 200 {"revision"}; 404 not
                                                   drained (controller/api/drains.py)
    GET    /v1/topology                          (viewer, editor, admin) 200 {"revision",
                                                   "agents", "endpoints", "links": [{agent_id,
                                                   address, state, latency_ms, loss, age_s,
                                                   stale}]}
  A change of the down set is a revision of its own, audited with actor "quorum"
  (operation endpoints.down, target down-set); so is a drain, an undrain and a drain's
  expiry (endpoint.drain | endpoint.undrain, target the address, before/after {"drained":
  [...]}, actor "drain-expiry" for an expiry); a refused drain is audited as
  endpoint.drain_refused with no revision.

The web UI (no token to load its files; it calls the routes above with the operator's)
    GET /ui/      the UI's static files (controller/webui); /ui redirects here

Health and trust (no token)
    GET /healthz  200 {"status": "ok"}
    GET /v1/ca    200 the CA bundle (application/x-pem-file) of a controller with --tls;
                  404 without TLS
    GET /readyz   200 {"status": "ready", "revision": R} | 503 database_unavailable

Errors: every error status has one shape, with ``fields`` always present:
    {"error": {"code": CODE, "message": TEXT, "fields": [{"path": P, "message": M}]}}
    400 malformed_json        the body is empty, not JSON, or nests deeper than 32 levels
    400 bad_request           the URL path or query holds NUL (%00)
    401 unauthorized          no/unknown/revoked/expired token (with WWW-Authenticate:
                              Bearer; an expired one says "the token has expired")
    403 forbidden             the token's role may not do this
    404 not_found             no such policy, slice, token or route
    405 method_not_allowed
    409 already_exists        POST of an existing policy/slice/token name
    409 domain_conflict       another policy has spec.domain (fields: spec.domain)
    409 local_policy_clash    POST/PUT giving a policy a name or domain that a connected
                              agent serves from its own --policies files (the agents, the
                              local policy and file named; fields: metadata.name or
                              spec.domain); ?force=true writes it anyway
    409 agent_connected       DELETE of an agent that is connected
    409 apply_refused         a document of POST /v1/apply was refused (422 when
                              every refused one is invalid); nothing was applied
    412 precondition_failed   If-Match is stale
    413 payload_too_large     the body is larger than --max-body (1 MiB by default), the
                              limit named: a Content-Length past it is refused before the
                              body is read, a chunked body when it passes it; the
                              connection is then closed (Connection: close)
    422 invalid_policy        fields name every offending path, e.g. spec.endpoints[1].weight
                              (slice writes report paths in the whole policy: spec.slices[2].groups)
    422 invalid_request       a bad query parameter, token name or role; a body string or
                              key holding NUL or a lone surrogate (on every route)
    503 database_unavailable  the database is down or dropped the connection; nothing was
                              written; Retry-After: 1
    503 commit_unknown        the database connection was lost during COMMIT: the write
                              may or may not have landed. Dnsmesh-Unknown-Revision: R names
                              the revision it would have (the last, for /v1/apply); re-read
                              (GET /readyz, the policy's ETag) before writing again. No
                              Retry-After: a blind retry of a POST could write twice
  While the database is away, GET /v1/policies and GET /v1/policies/{name} answer 200 from
  the push hub's copy when it has one (after the first agent), with Warning: 110 - "stale:
  database unavailable", X-Dnsmesh-Stale: true and X-Dnsmesh-Stale-Revision: R, for a
  token this process verified before the outage (controller/api/stale.py).
"""

from controller.api.app import create_app

__all__ = ["create_app"]
