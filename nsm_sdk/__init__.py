"""NSM topology sidecars: shared library for the NSM v1 wire protocol, transport, identity and kernel."""
