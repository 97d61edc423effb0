"""A topology in Kubernetes with NSM v1: what k8s-topo's `--create` made, for our sidecars.

`manifests.py` is pure (a `Wiring` and `KubeOptions` in, a list of Kubernetes objects as dicts out);
`cluster.py` creates and deletes them with the official client (`kubernetes`, imported only there, and only
when `connect` runs). Neither imports the local lab (`nsm_topo.local`): import-linter keeps them apart.
"""
