"""HTTP plumbing every route shares: the request context, the middlewares (request id,
CORS, key check, JSON errors, the access line), the client address behind trusted
proxies, dashboard session cookies and static files. It knows nothing of relaying."""
