"""nsm-topo: topology files to local labs or Kubernetes manifests. Reserved; not implemented yet."""
