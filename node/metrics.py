"""Prometheus metrics of the node (served at /metrics by the HTTP side).

One registry for the process; every part increments its own counters here so operators
see the whole flow: received -> stable -> triaged -> SR written -> forwarded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "triage_node_instances_received", "Instances offered to the store, by outcome", ["outcome"], registry=REGISTRY
)  # stored | duplicate | refused
BYTES_RECEIVED = Counter("triage_node_received_bytes", "Bytes of instances stored", registry=REGISTRY)
ASSOCIATIONS = Counter(
    "triage_node_associations", "DICOM associations, by result", ["result"], registry=REGISTRY
)  # accepted | rejected
STUDIES_STABLE = Counter(
    "triage_node_studies_stable", "Studies that went quiet and were queued for triage", registry=REGISTRY
)
QUEUE_DEPTH = Gauge("triage_node_queue_depth", "Triage jobs queued or running", registry=REGISTRY)
TRIAGE_LATENCY = Histogram(
    "triage_node_triage_latency_seconds",
    "From job queued to SR stored",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
NO_ASSIST = Counter(
    "triage_node_no_assist", "Studies answered with no AI assessment, by reason", ["reason"], registry=REGISTRY
)
SRS_WRITTEN = Counter(
    "triage_node_srs_written", "Structured Reports stored, by priority", ["priority"], registry=REGISTRY
)
FORWARD_ATTEMPTS = Counter(
    "triage_node_forward_attempts",
    "C-STORE forward attempts, by destination and outcome",
    ["destination", "outcome"],
    registry=REGISTRY,
)  # success | failure
FORWARD_DEAD_LETTERS = Counter(
    "triage_node_forward_dead_letters", "Outbox items given up on, by destination", ["destination"], registry=REGISTRY
)
ASSOCIATIONS_ACTIVE = Gauge("triage_node_associations_active", "DICOM associations established now", registry=REGISTRY)
CONNECTIONS_PENDING = Gauge(
    "triage_node_connections_pending",
    "TCP connections on the DICOM port still negotiating (no association yet)",
    registry=REGISTRY,
)
STORAGE_FREE_BYTES = Gauge("triage_node_storage_free_bytes", "Free bytes on the storage volume", registry=REGISTRY)
STORAGE_FLOOR_BYTES = Gauge(
    "triage_node_storage_floor_bytes", "storage.min_free_bytes: below it C-STORE answers 0xA700", registry=REGISTRY
)
MODEL_CALLS_PAST_DEADLINE = Gauge(
    "triage_node_model_calls_past_deadline",
    "Model calls abandoned at model.timeout_seconds that are still running (a stuck model or GPU)",
    registry=REGISTRY,
)
MODEL_STATE = Gauge(
    "triage_node_model_state", "Triage model state (1 for the current one)", ["state"], registry=REGISTRY
)  # loaded | not_loaded | disabled
