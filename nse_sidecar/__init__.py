"""nse-sidecar: registers an endpoint with the NSM manager and answers link requests (addresses, naming)."""
