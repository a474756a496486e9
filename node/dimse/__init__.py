"""DIMSE side: the Storage/Verification SCP (dimse.server) and our SCU (dimse.scu)."""
