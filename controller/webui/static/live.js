// Follows GET /v1/events (server-sent events) and reports each revision that lands.
// EventSource cannot send a header, so the stream is read with fetch(): the token goes
// in the Authorization header as for every other call, never in the URL.
import { ApiError, authHeaders } from "./api.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Calls onRevision(R) for every revision event and onState("live" | "reconnecting" |
 * "refused", ApiError when refused) as the stream comes and goes (a revoked token's
 * stream ends, and its reconnection is refused); returns a function that stops it.
 */
export function followRevisions(onRevision, onState) {
  let stopped = false;
  let aborter = null;
  (async () => {
    let backoff = 500;
    while (!stopped) {
      aborter = new AbortController();
      try {
        const response = await fetch("/v1/events", {
          headers: { ...authHeaders(), Accept: "text/event-stream" },
          signal: aborter.signal,
          cache: "no-store",
        });
        if (response.status === 401 || response.status === 403) {
          const body = await response.json().catch(() => null);
          onState("refused", new ApiError(response.status, body));
          return; // the token is not (or no longer) good: reconnecting would not help
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        onState("live");
        backoff = 500;
        for await (const event of serverSentEvents(response.body)) {
          if (event.type === "revision") onRevision(JSON.parse(event.data).revision);
        }
      } catch {
        // the controller restarted, the network dropped, or we were stopped
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  })();
  return () => {
    stopped = true;
    if (aborter) aborter.abort();
  };
}

/** The events of a text/event-stream body: {type, data} (WHATWG HTML §9.2 framing). */
export async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A CR at the end may be the first half of a CRLF: keep it for the next chunk.
    const complete = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, complete).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(complete);
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield { type, data: data.join("\n") };
        type = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}
