"""Where a request goes: the upstreams configured (config.py), their health (probe.py), the
pool that picks one for a model (pool.py) and the fair queue for a busy one (queue.py), the
merged model lists (union.py), what crosses besides the body (http.py: URL and headers),
model sync, and the transport (transport.py): the one way out to upstreams."""
