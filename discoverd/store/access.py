"""How discoverd reaches a secured backing etcd, and what it says when it cannot.

`EtcdAccess` is the TLS and RBAC configuration of the backing etcd (`--etcd-cacert`,
`--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password`). `TokenAuth` holds the etcd auth
token of one gateway and puts it in the `Authorization` header of every request of every session
(the watch included). The `explain_*` functions turn TLS failures and etcd's refusals into
one-line reasons that name what is wrong and the flag that fixes it.

No I/O here: `gateway.py` sends the requests, and authenticates with `/v3/auth/authenticate`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import requests
from requests.auth import AuthBase

from discoverd.errors import Unavailable
from discoverd.store import keys

# etcd's own words (etcd 3.4-3.6, server/etcdserver/api/v3rpc/rpctypes and embed/serve.go).
INVALID_TOKEN = "invalid auth token"  # noqa: S105 - a message
OLD_AUTH_REVISION = "revision of auth store is old"
NO_USER = "user name is empty"
AUTH_FAILED = "authentication failed"
AUTH_DISABLED = "authentication is not enabled"
PERMISSION_DENIED = "permission denied"
GATEWAY_CN = "CommonName of client sending a request against gateway"


class AccessRefused(Unavailable):
    """etcd answered and refused discoverd itself (credentials, permissions, client
    certificate): a configuration problem that no other endpoint answers differently."""


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """TLS files and RBAC credentials for the backing etcd; all optional."""

    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def configure(self, session: requests.Session) -> None:
        """TLS settings of a session to etcd (every endpoint, the watch included)."""
        if self.cacert is not None:
            session.verify = str(self.cacert)
        if self.cert is not None and self.key is not None:
            session.cert = (str(self.cert), str(self.key))

    @property
    def who(self) -> str:
        return f"etcd user {self.user!r}" if self.user else "discoverd (no --etcd-user)"


class TokenAuth(AuthBase):
    """The current etcd auth token, shared by the sessions of all threads.

    `token` is None until `gateway.py` authenticates, and "" when etcd has auth disabled
    (then no header is sent). `lock` serialises authentication, so one expiry costs one
    `/v3/auth/authenticate`, however many threads see it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token: str | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.token
        if token and not (request.path_url or "").endswith("/auth/authenticate"):
            request.headers["Authorization"] = token
        return request

    def invalidate(self, used: str | None) -> None:
        """Forget `used` (etcd said it is invalid), unless another thread replaced it already."""
        with self.lock:
            if self.token == used:
                self.token = None


class Verdict(Enum):
    """What the gateway does with an etcd refusal."""

    REAUTHENTICATE = "reauthenticate"  # the token expired or the auth store moved on: retry once
    REFUSED = "refused"  # a configuration problem: AccessRefused with the explanation
    REJECTED = "rejected"  # a refusal of this request (e.g. a lease not found): EtcdRejected


def judge(detail: str, access: EtcdAccess) -> tuple[Verdict, str]:
    """The verdict on an error that etcd answered with, and the reason to report."""
    if INVALID_TOKEN in detail or OLD_AUTH_REVISION in detail:
        return Verdict.REAUTHENTICATE, detail
    if NO_USER in detail and access.user:  # auth was enabled after this gateway authenticated
        return Verdict.REAUTHENTICATE, detail
    prefix = _prefix()
    refusals = {
        NO_USER: "backing etcd has authentication enabled and discoverd has no credentials "
        "({detail}): give --etcd-user and --etcd-password",
        AUTH_FAILED: "backing etcd refused the credentials of {who} ({detail}): "
        "check --etcd-user and --etcd-password",
        PERMISSION_DENIED: "backing etcd denied {who} access ({detail}): it needs readwrite on "
        "the key prefix {prefix} (etcdctl role grant-permission ROLE --prefix=true readwrite "
        "{prefix})",
        GATEWAY_CN: "backing etcd refuses a client certificate that has a Common Name on its "
        "HTTP gateway once auth is enabled (etcd: {detail!r}): issue --etcd-cert with no CN "
        "and name the user with --etcd-user",
    }
    for words, reason in refusals.items():
        if words in detail:
            text = reason.format(detail=detail.strip(), who=access.who, prefix=prefix)
            return Verdict.REFUSED, text
    return Verdict.REJECTED, detail


_VERIFY = re.compile(r"certificate verify failed: ([^(')\]]+)")
_CAUSE = re.compile(r"Caused by (\w+)\(")
_ALERT = re.compile(r"(?:TLSV1|TLSV13|SSLV3)_ALERT_([A-Z_]+)")


def explain_transport(exc: BaseException, access: EtcdAccess, scheme: str) -> str:
    """One endpoint's transport failure in words: TLS problems name the flag to check."""
    text = str(getattr(exc, "detail_text", None) or exc)  # etcd3gw keeps requests' words there
    tls = explain_tls(text, access)
    if tls:
        return tls
    aborted = "RemoteDisconnected" in text or "Connection aborted" in text
    known = [
        (scheme == "http" and aborted,
         "closed the connection without an answer (an https:// endpoint given as http://?)"),
        (isinstance(exc, requests.Timeout) or "Timeout" in type(exc).__name__, "timed out"),
        ("Connection refused" in text, "connection refused"),
        # A plain etcd answers a TLS hello with a 400 and closes: the client sees either its
        # reply (WRONG_VERSION_NUMBER, above) or, when the close wins the race, a reset.
        (scheme == "https" and (aborted or "Connection reset" in text),
         "connection reset (if the endpoint does not speak TLS: an http:// endpoint given as "
         "https://?)"),
        (aborted or "Connection reset" in text, "connection reset"),
        # e.g. a TLS file that vanished since the start
        (isinstance(exc, OSError) and not isinstance(exc, requests.RequestException),
         f"{type(exc).__name__}: {exc}"),
    ]  # fmt: skip
    for applies, words in known:
        if applies:
            return words
    cause = _CAUSE.search(text)
    return cause.group(1) if cause else type(exc).__name__


def explain_tls(text: str, access: EtcdAccess) -> str | None:
    """A TLS handshake failure (from its OpenSSL text) in words, or None if it is not one."""
    verify = _VERIFY.search(text)
    if verify or "CERTIFICATE_VERIFY_FAILED" in text:
        why = verify.group(1).strip() if verify else "certificate verify failed"
        fix = "check --etcd-cacert" if access.cacert else "give --etcd-cacert"
        return (
            f"TLS: etcd's server certificate is not trusted (certificate verify failed: {why}): "
            f"{fix}, the CA that signed etcd's server certificates"
        )
    alert = _ALERT.search(text)
    if alert:
        what = alert.group(1).lower().replace("_", " ")
        if access.cert is None:
            return (
                f"TLS: etcd requires a client certificate (etcd's alert: {what}): "
                "give --etcd-cert and --etcd-key"
            )
        return (
            f"TLS: etcd rejected discoverd's client certificate (etcd's alert: {what}): check "
            "--etcd-cert and --etcd-key; the CA of etcd's --trusted-ca-file must have signed it"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "TLS: the endpoint does not speak TLS (an http:// endpoint given as https://?)"
    if "UNEXPECTED_EOF" in text or "SSLEOFError" in text:
        return (
            "TLS: the endpoint closed the connection during the handshake (it does not speak "
            "TLS: an http:// endpoint given as https://?)"
        )
    return None


def summarise(failures: list[tuple[str, str]], what: str = "backing etcd is unavailable") -> str:
    """The reason for `Unavailable` when every endpoint failed; one reason said once."""
    reasons = {reason for _, reason in failures}
    if len(reasons) == 1:
        where = ", ".join(endpoint for endpoint, _ in failures)
        return f"{what}: {reasons.pop()} ({where})"
    return f"{what} (" + "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures) + ")"


def _prefix() -> str:
    """The prefix discoverd's etcd user needs: the first segment of the key layout."""
    return "/" + keys.ROOT.strip("/").split("/")[0] + "/"
