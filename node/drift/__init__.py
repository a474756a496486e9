"""Drift per stream: reference vs recent embeddings, scores, no-assist rate and headers (issue 9)."""
