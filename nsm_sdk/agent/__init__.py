"""Runtime pieces shared by the agents: structured logging, the task supervisor, token metadata and the
NSM gRPC clients. Sits above transport/kernel/identity and below nsc_sidecar, nse_sidecar and nsm_local."""
