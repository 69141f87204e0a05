"""The node agent: DNS listeners, resolver pipeline, upstream forwarding, cache, policy reload."""
