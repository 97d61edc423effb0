"""Error roots of the protocol layer.

Every error says whether retrying can help (`temporary`), so drivers decide retry versus exit without
string matching, and which gRPC status a server answers with when it refuses a call for it
(`grpc_status`), so that servicers never pick codes by hand. The code is kept as the name of a
`grpc.StatusCode` member because this layer does not import grpc; `nsm_sdk.transport.status` turns it
into the code at the servicer boundary, in one place.

Go's nsmgr and endpoints answer almost every refusal with UNKNOWN (a plain Go error, protocol doc §7);
Go clients and ours retry whatever the code, so a more precise code changes no client's behaviour. The
one code a client acts on is UNAVAILABLE (ours retries once on a fresh connection; nsm-local drops its
channel to an endpoint that answers it), so only "cannot reach it" errors use it.
"""

from __future__ import annotations


class NsmError(Exception):
    """Root of every error raised by nsm_sdk."""

    temporary: bool = False
    grpc_status: str = "UNKNOWN"
    """The `grpc.StatusCode` member name a server answers with; UNKNOWN, like a plain Go error."""


class ConfigError(NsmError):
    """Bad configuration: one variable, its value and what is wrong with it. Never retried."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, variable: str, value: str | None, problem: str) -> None:
        self.variable = variable
        self.value = value
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = "<unset>" if self.value is None else repr(self.value)
        return f"{self.variable}={shown}: {self.problem}"


class ProtocolError(NsmError):
    """A message breaks an NSM rule (bad path, unknown mechanism, ...). The peer must change, not us."""

    grpc_status = "INVALID_ARGUMENT"


class TemporaryError(NsmError):
    """A fault that may go away on its own (peer down, deadline exceeded): retry with backoff."""

    temporary = True


class NotFoundError(TemporaryError):
    """No such service, endpoint or connection (yet): it may be registered later."""

    grpc_status = "NOT_FOUND"


class UnavailableError(TemporaryError):
    """What the call needs cannot be reached right now (every candidate endpoint failed)."""

    grpc_status = "UNAVAILABLE"


class DeadlineError(TemporaryError):
    """Something the call waits for did not arrive in time (an fd on the connection)."""

    grpc_status = "DEADLINE_EXCEEDED"


class ExhaustedError(TemporaryError):
    """A cap or a pool is used up (no free addresses); may free up when others close."""

    grpc_status = "RESOURCE_EXHAUSTED"
