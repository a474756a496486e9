"""The one rule that tells the node's own objects (its SRs, summary cards and PDFs) from what
modalities and PACS sent: they name this node as Manufacturer. The worker must never triage its
own SR, evaluation and embedding must never take it for an image, and the console leaves it out
of the skipped images; all of them ask here instead of comparing strings of their own."""

from __future__ import annotations

from pydicom.dataset import Dataset

#: Manufacturer (and Manufacturer's Model Name) of every object the node makes.
OWN_MANUFACTURER = "triage-node"


def is_own_sr(ds: Dataset) -> bool:
    """An SR this node wrote (Modality SR, Manufacturer this node)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    return modality == "SR" and manufacturer == OWN_MANUFACTURER


__all__ = ["OWN_MANUFACTURER", "is_own_sr"]
