"""The domain error tree. Transports map it once: HTTP in `discoverd.http_errors`.

    DiscoverdError
    ├── Invalid        the request is malformed or breaks a rule (bad size, bad value)
    │   └── TooLarge   a key, value or body is over its bound
    ├── NotFound       no such token or key
    ├── Conflict       the key exists already (registrations are create-only)
    │   └── NameTaken  a cluster name is already in use
    ├── Forbidden      the operation is never allowed on this resource (read-only keys)
    ├── Unauthorized   no credentials, or wrong ones (the admin API's bearer token)
    ├── RateLimited    the client asked too often; carries retry_after seconds
    └── Unavailable    the backing etcd does not answer; transient, retry later

Errors carry a human-readable message and, where useful, the `cause` (the key or field it
concerns). They know nothing of status codes or rcodes.
"""

from __future__ import annotations


class DiscoverdError(Exception):
    """Base of every error that discoverd reports to a client."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


class Invalid(DiscoverdError):
    """The request is malformed or breaks a rule."""


class TooLarge(Invalid):
    """A key, value or body is larger than allowed."""


class NotFound(DiscoverdError):
    """No such token or key."""


class Conflict(DiscoverdError):
    """The key exists already."""


class NameTaken(Conflict):
    """A cluster name is already in use."""


class Forbidden(DiscoverdError):
    """The operation is never allowed on this resource."""


class Unauthorized(DiscoverdError):
    """The request lacks valid credentials (the admin API's bearer token)."""


class RateLimited(DiscoverdError):
    """The client sent too many requests; it may retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DiscoverdError):
    """The backing etcd cannot be reached or did not answer in time."""
