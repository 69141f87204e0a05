// Loading what a page shows, again whenever its inputs change (a new revision landed, a
// filter changed) and, for state that moves without a revision, on a timer.
import { useEffect, useState } from "./vendor/preact-htm.module.js";

/**
 * {data, error, loading}: `load()` (a promise) run now and whenever a value in `inputs`
 * changes, and every `everyMs` if given. The last data stays shown while a reload runs,
 * so a live refresh does not flicker.
 */
export function useResource(load, inputs, { everyMs = 0 } = {}) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  useEffect(() => {
    let current = true;
    const run = () =>
      load().then(
        (data) => current && setState({ data, error: null, loading: false }),
        (error) => current && setState((old) => ({ data: old.data, error, loading: false })),
      );
    run();
    const timer = everyMs ? setInterval(run, everyMs) : null;
    return () => {
      current = false;
      if (timer) clearInterval(timer);
    };
  }, inputs);
  return state;
}
