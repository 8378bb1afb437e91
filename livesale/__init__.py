"""Shared plumbing that every livesale package may import: settings, error codes and the
exception tree, the embedded Redis launcher and client, JWT auth, HTTP helpers, SQL engine and the
stream event bus. Nothing here imports `live`, `realtime`, `commerce` or `load`."""
