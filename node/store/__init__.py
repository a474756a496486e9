"""Durable storage of received instances: files (store.files) + SQL index (store.index), joined by store.ingest."""
