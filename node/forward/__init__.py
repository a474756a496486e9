"""Durable forwarding: an outbox in the database, a C-STORE sender and a background forwarder.

enqueue (when a study's SR is stored) -> claim due items -> C-STORE per destination -> sent,
or retried with exponential backoff until ``forwarding.max_age_seconds``, then a dead letter
that `triage-node outbox` lists and can requeue.
"""

from node.forward.outbox import destination_key, enqueue_study

__all__ = ["destination_key", "enqueue_study"]
