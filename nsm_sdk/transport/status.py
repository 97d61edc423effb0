"""The one place where an error becomes a gRPC status: `NsmError.grpc_status` names the code.

Servicers catch `NsmError` at their boundary and `abort` with it; everything else they raise is a bug and
reaches the caller as grpcio's UNKNOWN.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from nsm_sdk.protocol.errors import NsmError


def status_code(exc: NsmError) -> grpc.StatusCode:
    """The status a server answers with when `exc` refuses a call."""
    return grpc.StatusCode[exc.grpc_status]


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: NsmError, prefix: str = "") -> NoReturn:
    """End the call with `exc`'s status and text (`prefix` first, e.g. ``registry: ``)."""
    await context.abort(status_code(exc), f"{prefix}{exc}")
    raise AssertionError("unreachable") from exc
