"""nsc-sidecar: requests every configured link from the NSM manager, verifies, refreshes, heals, closes."""
