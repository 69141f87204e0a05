// The dnsmesh web UI: log in with a token, then the pages (hash routes) over the REST API,
// read again whenever GET /v1/events says a revision landed.
import { html, render, useEffect, useState } from "./vendor/preact-htm.module.js";
import { api, onUnauthorized, session } from "./api.js";
import { followRevisions } from "./live.js";
import { Agents } from "./pages/agents.js";
import { Audit } from "./pages/audit.js";
import { PolicyEdit } from "./pages/edit.js";
import { Endpoints } from "./pages/endpoints.js";
import { PolicyList, PolicyView } from "./pages/policies.js";
import { Topology } from "./pages/topology.js";
import { ErrorNote } from "./widgets.js";

const PAGES = [
  ["policies", "Policies"],
  ["agents", "Agents"],
  ["endpoints", "Endpoints"],
  ["topology", "Topology"],
  ["audit", "Audit"],
];

/** "#/policies/web/edit" -> ["policies", "web", "edit"]. */
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return parts.length ? parts.map(decodeURIComponent) : ["policies"];
}

function Login({ reason, onLogin }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    try {
      const { data } = await api("/v1/whoami", { token: token.trim() });
      session.login(token.trim());
      onLogin(data);
    } catch (failure) {
      setError(failure);
    }
  };
  return html`<main class="login">
    <h1>dnsmesh</h1>
    <form id="login" onSubmit=${submit}>
      <label for="token">API token</label>
      <input id="token" type="password" autocomplete="off" placeholder="dnsm_…"
        value=${token} onInput=${(e) => setToken(e.target.value)} />
      <button type="submit" class="primary">Log in</button>
      <p class="muted">Kept in this tab only (sessionStorage) until you log out or close it.
        A viewer token can look; editor and admin tokens can change policies.</p>
      ${reason && html`<p class="notice">${reason}</p>`}
      <${ErrorNote} error=${error} />
    </form>
  </main>`;
}

function Page({ path, who, revision, onSaved }) {
  const [page, name, action] = path;
  if (page === "policies" && name && action === "edit") {
    return html`<${PolicyEdit} key=${name} name=${name} who=${who} onSaved=${(r) => onSaved(name, r)} />`;
  }
  if (page === "policies" && name) return html`<${PolicyView} name=${name} revision=${revision} who=${who} />`;
  const pages = { policies: PolicyList, agents: Agents, endpoints: Endpoints, topology: Topology, audit: Audit };
  const Shown = pages[page];
  if (!Shown) return html`<section><h1>Not found</h1><p>No page ${location.hash}.</p></section>`;
  return html`<${Shown} revision=${revision} who=${who} />`;
}

function App() {
  const [who, setWho] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.token));
  const [reason, setReason] = useState(null);
  const [path, setPath] = useState(route());
  const [revision, setRevision] = useState(null);
  const [live, setLive] = useState("connecting");
  const [notice, setNotice] = useState(null);

  const logout = (why = null) => {
    session.logout();
    setWho(null);
    setReason(why);
  };

  useEffect(() => {
    onUnauthorized((error) => logout(`Logged out: ${error.message}.`));
    const follow = () => {
      setPath(route());
      setNotice((shown) => (shown && shown.hash === location.hash ? shown : null));
    };
    addEventListener("hashchange", follow);
    if (session.token) {
      api("/v1/whoami").then(
        ({ data }) => setWho(data),
        () => {},
      ).finally(() => setChecking(false));
    }
    return () => removeEventListener("hashchange", follow);
  }, []);

  useEffect(() => {
    if (!who) return undefined;
    return followRevisions(setRevision, (state, refusal) => {
      setLive(state);
      if (refusal && refusal.status === 401) logout(`Logged out: ${refusal.message}.`);
    });
  }, [who]);

  if (checking) return html`<p class="loading">Loading…</p>`;
  if (!who) return html`<${Login} reason=${reason} onLogin=${(data) => { setWho(data); setReason(null); }} />`;

  const saved = (name, savedRevision) => {
    const hash = `#/policies/${encodeURIComponent(name)}`;
    setNotice({ hash, text: `Saved ${name} as revision ${savedRevision}.` });
    location.hash = hash;
  };
  return html`<header>
      <strong class="brand">dnsmesh</strong>
      <nav>${PAGES.map(
        ([page, title]) => html`<a href=${`#/${page}`} class=${path[0] === page ? "current" : ""}>${title}</a>`,
      )}</nav>
      <span id="live" class=${`live ${live}`} data-state=${live} data-revision=${revision ?? ""}
        title="revisions are shown as they land">
        ${live === "live" ? `live · revision ${revision ?? "…"}` : live}
      </span>
      <span class="who">${who.name} (${who.role})</span>
      <button type="button" id="logout" onClick=${() => logout()}>Log out</button>
    </header>
    <main>
      ${notice && html`<p class="notice" id="notice">${notice.text}</p>`}
      <${Page} path=${path} who=${who} revision=${revision} onSaved=${saved} />
    </main>`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading…" placeholder: Preact renders beside what it finds
render(html`<${App} />`, root);
