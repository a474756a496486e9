"""Linear probes on frozen MedSigLIP image embeddings, learnt from local labels (issue 9)."""
