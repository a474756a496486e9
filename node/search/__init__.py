"""Search the archive by text or by example over the kept image embeddings (issue 9)."""
