"""The Redis bus: events between processes, the Redis gate, rate limits, job figures, client options."""
