"""Workload identity: ES256 path and metadata tokens today; SPIFFE X.509-SVIDs with the security work."""
