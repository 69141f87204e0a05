// The REST API, called with the token the operator logged in with. The token is kept in
// sessionStorage (gone when the tab closes) and sent as a header, never in a URL.
const KEY = "dnsmesh.token";

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  login(token) {
    sessionStorage.setItem(KEY, token);
  },
  logout() {
    sessionStorage.removeItem(KEY);
  },
};

// Called when the API answers 401 (the token expired or was revoked): the app logs out.
let unauthorized = () => {};
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** An error answer: {status, code, message, fields: [{path, message}]} as the API says. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the controller answered HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.fields = error.fields || [];
  }
}

export function authHeaders(token = session.token) {
  return { Authorization: `Bearer ${token}` };
}

/** fetch() with the token; resolves to {data, etag, status}, rejects with ApiError. */
export async function api(path, { method = "GET", body, headers = {}, token } = {}) {
  const sending = body !== undefined;
  const response = await fetch(path, {
    method,
    headers: {
      ...authHeaders(token),
      ...(sending ? { "Content-Type": "application/json" } : {}),
      ...headers,
    },
    body: sending ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null; // not JSON (a proxy's page): the status says enough
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && token === undefined) unauthorized(error);
    throw error;
  }
  return { data, etag: response.headers.get("ETag"), status: response.status };
}

/** "team=payments, tier=frontend" -> "?label=team%3Dpayments&label=tier%3Dfrontend". */
export function labelQuery(text) {
  const params = new URLSearchParams();
  for (const pair of text.split(/[\s,]+/).filter(Boolean)) params.append("label", pair);
  const query = params.toString();
  return query ? `?${query}` : "";
}
