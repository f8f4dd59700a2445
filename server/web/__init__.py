"""The web edge's plumbing: app keys, middlewares, the problem mapping, OpenAPI, metrics, logs."""
