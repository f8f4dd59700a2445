"""Local-run tooling: `booking up`, the Procfile supervisor, embedded PostgreSQL/Redis, the checkout lock."""
