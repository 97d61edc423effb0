"""nsm-local as the NSM of one Kubernetes node (`nsm-local serve --kubernetes`; docs/kubernetes.md).

* `client`: the only module that imports the official `kubernetes` client (untyped), imported only in
  this mode; it asks for raw responses and hands out plain dicts, `Listing`s and `WatchEvent`s, and turns
  client errors into `errors`.
* `reflector`: list + watch of one kind of object, resuming from the resourceVersion, re-listing on 410
  Gone, retrying with backoff (asyncio over the client's blocking calls, in daemon threads).
* `services`: NetworkService objects -> nsm-local's registry, decoded as NSM's registry-k8s decodes them.
* `pods`: which pod a Workload API caller belongs to (its container id from /proc/<pid>/cgroup, matched
  against the pods of this node) -> `spiffe://<trust domain>/ns/<namespace>/pod/<name>`.
* `node`: the settings and the running whole (pod index first, then the services into the registry).
* `manifests`: NSM's NetworkService CRD, RBAC and the DaemonSet that runs nsm-local; pure.
"""
