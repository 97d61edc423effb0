"""nsm-topo: k8s-topo topology files for NSM v1.

Built so far: reading and checking topology files (`topology`), the wiring every device's sidecars get
(`wiring`, the one function the local lab and the Kubernetes manifests will share), and k8s-topo's random
network builder with FRR configurations (`builder`). Local labs, Kubernetes manifests and the graph come next.
"""
