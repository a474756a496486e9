"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS, UPS-RS) and operations endpoints (FastAPI)."""

from node.dicomweb.app import create_app

__all__ = ["create_app"]
