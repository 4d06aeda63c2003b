# -*- test-case-name: tests.web.test_admin_api,tests.web.test_admin_hostile -*-
"""
Admin API errors: gRPC status codes, the HTTP status grpc-gateway gives each,
and the error body ``{"code": <gRPC code>, "message": "...", "details": []}``.

Domain errors (:mod:`headscale_tw.errors`) are mapped here, so services raise
their own errors and never know about HTTP.
"""

from __future__ import annotations

import json

from headscale_tw.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    HeadscaleError,
    InvalidInput,
    LimitReached,
    NotFound,
    Unauthenticated,
    UserHasNodes,
)
from headscale_tw.throttle import Throttled

__all__ = ["ApiError", "OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION",
           "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "http_status", "error_body",
           "from_domain"]

# gRPC status codes used by grpc-gateway, and the HTTP status it maps each to.
OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION = 0, 3, 5, 6, 9
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
RESOURCE_EXHAUSTED = 8
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, FAILED_PRECONDITION: 400,
                UNIMPLEMENTED: 501, INTERNAL: 500, UNAVAILABLE: 503, UNAUTHENTICATED: 401,
                RESOURCE_EXHAUSTED: 429}
_DOMAIN_CODES = ((NotFound, NOT_FOUND), (AlreadyExists, ALREADY_EXISTS), (UserHasNodes, FAILED_PRECONDITION),
                 (InvalidInput, INVALID_ARGUMENT), (Expired, FAILED_PRECONDITION),
                 (Unauthenticated, UNAUTHENTICATED), (Throttled, RESOURCE_EXHAUSTED),
                 (Conflict, FAILED_PRECONDITION), (LimitReached, FAILED_PRECONDITION))


class ApiError(Exception):
    """A request failure with its gRPC code; ``str()`` is the message shown to the caller.

    ``status`` overrides the HTTP status grpc-gateway would use for ``code``
    (413 for a body over the size limit, which has no gRPC code of its own).
    """

    def __init__(self, code: int, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


def http_status(error: ApiError) -> int:
    """The HTTP status of ``error``."""
    return error.status or _HTTP_STATUS.get(error.code, 500)


def error_body(code: int, message: str) -> bytes:
    """grpc-gateway's error JSON."""
    return json.dumps({"code": code, "message": message, "details": []}).encode("utf-8")


def from_domain(error: HeadscaleError) -> ApiError:
    """The API error for a domain error (an unlisted kind is ``FAILED_PRECONDITION``)."""
    for cls, code in _DOMAIN_CODES:
        if isinstance(error, cls):
            return ApiError(code, str(error))
    return ApiError(FAILED_PRECONDITION, str(error))
