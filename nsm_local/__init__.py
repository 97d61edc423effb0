"""nsm-local: an embedded NSM control plane (registry, manager, kernel forwarder) for one host."""
