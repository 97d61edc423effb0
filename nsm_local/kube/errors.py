"""Errors of the Kubernetes API boundary, free of the client's own classes."""

from __future__ import annotations

from nsm_sdk.protocol.errors import NsmError


class KubeError(NsmError):
    """The API server could not be used for what was asked (retried with backoff where it makes sense)."""


class KubeUnreachable(KubeError):
    """No answer: connection refused, timeout, TLS failure."""


class KubeApiError(KubeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ResourceExpired(KubeApiError):
    """410 Gone: the resourceVersion a watch started from is too old; list again."""

    def __init__(self, message: str) -> None:
        super().__init__(410, message)


class KubeConfigError(KubeError):
    """No usable kubeconfig or in-cluster configuration."""
