"""The certificate authority's rules: enroll, renew, revoke, publish the CA and its CRL.

One CA per cluster, made on first use and stored sealed with the service key; it lives with
the token until the first enrollment, which moves the cluster to the CA's lease. Enrollment is
bound to the token and the member name: a name gets one certificate per profile, and at most
`size` names per profile are ever enrolled, so a token that leaks after the bootstrap cannot
mint new identities; a certificate names only its member (`certs.policy`). Renewal proves
possession of the current key (a CSR signed with the key of the current certificate, which
must chain to the cluster's CA and not be revoked), keeps the name, profile and SANs, and
revokes the certificate it replaces. A key an operator revoked is refused for enrollment and
renewal. Enrollments are checked against an index of the cluster's inventory
(`certs.inventory`) and recorded by group commit (`certs.enrolling`). A CRL is signed again
when a revocation changes it and when it is CRL_REFRESH old, by `clock`, so the CRL served is
never near its nextUpdate. A replica opens each CA key once and keeps it in memory only, for
as long as etcd holds the same certificate and sealed key (a CA replaced or re-sealed in etcd
is opened again). Nothing here logs a key, a
CSR or a token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509 as cx509

from discoverd.certs import pki, policy
from discoverd.certs.enrolling import EnrollmentBatcher
from discoverd.certs.inventory import Index, Inventories
from discoverd.certs.pki import Profile
from discoverd.directory import rules
from discoverd.directory.service import Directory
from discoverd.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from discoverd.models import CaRecord, CertRecord, Cluster
from discoverd.store.certificates import CertificateStore
from discoverd.store.clusters import LeaseGone
from discoverd.store.enrollment import Enrollment, EnrollRefusal

logger = logging.getLogger(__name__)

KEY_CACHE = 1024
CRL_LIFETIME = dt.timedelta(days=7)  # a CRL's nextUpdate is this long after its lastUpdate
# A served CRL is signed again once it is this old, so its nextUpdate is always at least
# CRL_LIFETIME - CRL_REFRESH away (etcd 3.6 refuses every connection on an expired CRL).
CRL_REFRESH = CRL_LIFETIME / 2


@dataclass(frozen=True, slots=True)
class _Ca:
    """A cluster's CA opened once: valid while the stored record's certificate and sealed key
    are `pem` and `sealed` (a CA replaced in etcd is opened again)."""

    key: pki.PrivateKey
    pem: str
    sealed: str
    cert: cx509.Certificate
    key_identifier: cx509.AuthorityKeyIdentifier  # worked out once: every leaf carries it


@dataclass(frozen=True, slots=True)
class _Crl:
    serials: tuple[str, ...]  # the revoked serials it lists
    signed_at: float  # the authority's clock when it was signed
    number: int  # its CRLNumber
    crl: cx509.CertificateRevocationList


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: str
    ca: str
    record: CertRecord


class Authority:
    def __init__(
        self,
        discovery: Directory,
        store: CertificateStore,
        service_key: bytes,
        zone: str,
        cert_ttl: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._discovery = discovery
        self._store = store
        self._enrolling = EnrollmentBatcher(discovery, store)
        self.clock = clock  # the time CRLs are signed at (and refreshed by)
        self._service_key = service_key
        self.key_id = hashlib.sha256(b"discoverd-service-key" + service_key).hexdigest()[:16]
        self._zone = zone
        self._lifetime = dt.timedelta(seconds=cert_ttl)
        self._cas: OrderedDict[str, _Ca] = OrderedDict()  # the hot path parses nothing
        self._inventories = Inventories()
        self._crls: OrderedDict[str, _Crl] = OrderedDict()
        self._ca_lock = asyncio.Lock()

    # -- the CA --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the enrollment batcher (on shutdown; waiting enrollments are cancelled)."""
        await self._enrolling.close()

    async def ca_pem(self, token: str) -> str:
        cluster = await self._discovery.cluster(token)
        return (await self._ca(cluster)).pem

    async def _ca(self, cluster: Cluster) -> _Ca:
        """The cluster's CA key, PEM and certificate (made on first use; cached per token)."""
        record = cluster.ca
        if record is None:
            async with self._ca_lock:
                record = cluster.ca or await self._create_ca(cluster)
        cached = self._cas.get(cluster.token)
        if cached is not None and (cached.pem, cached.sealed) == (
            record.certificate,
            record.sealed_key,
        ):
            return cached
        if record.key_id != self.key_id:
            raise Unavailable(
                "this replica's service key cannot open the cluster's CA key: every replica "
                "must share one --service-key-file"
            )
        try:
            blob = base64.b64decode(record.sealed_key, validate=True)
        except binascii.Error:
            raise Unavailable("cannot open the CA key: its stored form is damaged") from None
        try:
            key = await asyncio.to_thread(pki.unseal, blob, self._service_key, cluster.token)
        except pki.SealError as exc:
            raise Unavailable(str(exc)) from exc
        return self._remember(cluster.token, key, record)

    def _remember(self, token: str, key: pki.PrivateKey, record: CaRecord) -> _Ca:
        cert = pki.load_cert(record.certificate)
        entry = self._cas[token] = _Ca(
            key,
            record.certificate,
            record.sealed_key,
            cert,
            pki.key_identifier(key),
        )
        while len(self._cas) > KEY_CACHE:
            self._cas.popitem(last=False)
        return entry

    async def _create_ca(self, cluster: Cluster) -> CaRecord:
        # The token is a secret and CA certificates are shown to anyone who connects to a
        # member, so the subject names the cluster by its label, never the token.
        label = cluster.config.name or rules.cluster_label(cluster.token)
        key, cert = await asyncio.to_thread(pki.new_ca, f"discoverd etcd CA {label}")
        sealed = pki.seal(key, self._service_key, cluster.token)
        record = CaRecord(
            certificate=pki.pem(cert),
            sealed_key=base64.b64encode(sealed).decode(),
            key_id=self.key_id,
        )
        try:  # on the token's lease: only an enrollment makes the cluster outlive the token
            stored, revision = await self._store.create_ca(cluster.token, record, cluster.lease)
        except LeaseGone as exc:
            raise NotFound("the discovery token has expired", cause=f"/{cluster.token}") from exc
        await self._discovery.settle(revision)
        if stored is record:
            self._remember(cluster.token, key, record)
            logger.info("created a cluster CA", extra={"ca_sha256": pki.fingerprint(cert)})
        return stored

    # -- issuing -------------------------------------------------------------------------------

    async def enroll(self, token: str, name: str, csr_pem: str, profile_name: str) -> Issued:
        profile = _profile(profile_name)
        request = pki.load_request(csr_pem)
        cluster = await self._discovery.bootstrap_cluster(token)
        name = policy.subject_name(profile, name, allow_root=cluster.config.allow_root)
        inventory = self._inventories.of(cluster)
        if request.spki_sha256 in inventory.revoked_keys:
            raise Forbidden("this key belongs to a revoked certificate; make a new key")
        taken = _taken(inventory, request.sans)
        sans = policy.leaf_sans(profile, request.sans, self._policy(cluster), name, taken)
        names = inventory.names.get(profile.value, set())
        limit = cluster.config.size
        if profile is Profile.CLIENT and cluster.config.clients is not None:
            limit = cluster.config.clients
        if name not in names and len(names) >= limit:
            raise Forbidden(
                f"{len(names)} names already hold a {profile.value} certificate in this cluster "
                f"(at most {limit}; client identities are set with /new?clients=N); "
                "enrollment is closed",
                cause=name,
            )
        issued = await self._issue(cluster, request, name, sans, profile)
        revision = await self._enrolling.enroll(Enrollment(token, issued.record, limit))
        if revision is EnrollRefusal.FULL:
            raise Forbidden(
                f"{limit} names already hold a {profile.value} certificate in this cluster; "
                "enrollment is closed",
                cause=name,
            )
        if revision is EnrollRefusal.CLAIMED:
            raise Conflict(
                f"{name} already has a {profile.value} certificate; renew it with "
                "POST /api/v1/certs/renew, or have an operator revoke it",
                cause=name,
            )
        assert isinstance(revision, int)
        await self._discovery.settle(revision)
        return issued

    async def renew(self, token: str, cert_pem: str, csr_pem: str) -> Issued:
        cluster = await self._discovery.cluster(token)
        ca = await self._ca(cluster)
        current = pki.load_cert(cert_pem)
        if not pki.issued_by(current, ca.cert):
            raise Forbidden("this certificate was not issued by this cluster's CA")
        request = pki.load_request(csr_pem)
        key_id = pki.spki_sha256(current.public_key())
        if request.spki_sha256 != key_id:
            raise Forbidden("the csr must be signed with the key of the certificate to renew")
        record = cluster.cert(format(current.serial_number, "x"))
        if record is None:
            raise Forbidden("this certificate is not in the cluster's inventory")
        if record.superseded_by is not None:
            raise Conflict("this certificate was renewed already", cause=record.serial)
        if record.revoked_at is not None:
            raise Forbidden("this certificate is revoked and cannot be renewed")
        if key_id in cluster.revoked_keys():
            raise Forbidden("this key belongs to a revoked certificate; enroll a new key")
        if record.not_after < time.time():
            raise Forbidden("this certificate has expired; an operator must re-issue it")
        profile = Profile(record.profile)
        sans = policy.relabel(pki.cert_sans(current), token, rules.cluster_label(token))
        issued = await self._issue(cluster, request, record.name, sans, profile)
        old = record.model_copy(
            update={"revoked_at": time.time(), "superseded_by": issued.record.serial}
        )
        revision = await self._store.renew(token, old, issued.record, cluster.lease)
        if revision is None:
            raise Conflict("this certificate was renewed already", cause=record.serial)
        await self._discovery.settle(revision)
        return issued

    async def _issue(
        self, cluster: Cluster, request: pki.Request, name: str, sans: pki.Sans, profile: Profile
    ) -> Issued:
        ca = await self._ca(cluster)
        cert = pki.issue(
            ca.key,
            ca.cert,
            public_key=request.public_key,
            common_name=name,
            sans=sans,
            profile=profile,
            lifetime=self._lifetime,
            authority_key_id=ca.key_identifier,
        )
        record = CertRecord(
            serial=format(cert.serial_number, "x"),
            name=name,
            profile=profile.value,
            sans=tuple(sans.as_strings()),
            not_after=cert.not_valid_after_utc.timestamp(),
            fingerprint=pki.fingerprint(cert),
            issued_at=time.time(),
            spki_sha256=request.spki_sha256,
        )
        return Issued(pki.pem(cert), ca.pem, record)

    # -- revocation ----------------------------------------------------------------------------

    async def revoke(self, token: str, serial: str) -> CertRecord:
        cluster = await self._discovery.cluster(token)
        record = cluster.cert(serial.lower())
        if record is None:
            raise Invalid(f"no certificate with serial {serial} in this cluster", cause=serial[:40])
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": time.time()})
            await self._discovery.settle(await self._store.revoke(token, record, cluster.lease))
        return record

    async def crl_pem(self, token: str) -> str:
        return pki.pem(await self._crl(token))

    async def crl_der(self, token: str) -> bytes:
        return pki.der(await self._crl(token))

    async def _crl(self, token: str) -> cx509.CertificateRevocationList:
        """The cluster's CRL, signed again when a revocation changed it or when it is
        CRL_REFRESH old, so a quiet cluster is never served an expired one."""
        cluster = await self._discovery.cluster(token)
        revoked = [c for c in cluster.certs if c.revoked_at is not None]
        serials = tuple(sorted(c.serial for c in revoked))
        now = self.clock()
        cached = self._crls.get(token)
        if (
            cached is not None
            and cached.serials == serials
            and 0 <= now - cached.signed_at < CRL_REFRESH.total_seconds()
        ):
            return cached.crl
        ca = await self._ca(cluster)
        entries = [
            (int(c.serial, 16), dt.datetime.fromtimestamp(c.revoked_at or 0, dt.UTC))
            for c in revoked
        ]
        # Milliseconds of the signing time: a CRL signed later has a larger number (and one
        # signed by a version that counted revocation seconds, a smaller one).
        number = max(int(now * 1000), cached.number + 1 if cached is not None else 0)
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        crl = pki.crl(ca.key, ca.cert, entries, number, CRL_LIFETIME, at=at,
                       authority_key_id=ca.key_identifier)  # fmt: skip
        self._crls[token] = _Crl(serials, now, number, crl)
        self._crls.move_to_end(token)
        while len(self._crls) > KEY_CACHE:
            self._crls.popitem(last=False)
        return crl

    def _policy(self, cluster: Cluster) -> policy.SanPolicy:
        domains = [f"{rules.cluster_label(cluster.token)}.{self._zone}"]
        if cluster.config.name:
            domains.append(f"{cluster.config.name}.{self._zone}")
        cidrs = tuple(ipaddress.ip_network(cidr) for cidr in cluster.config.cidrs)
        return policy.SanPolicy(tuple(domains), cluster.config.dns_suffixes, cidrs)


def _taken(inventory: Index, wanted: pki.Sans) -> dict[policy.IPAddress, str]:
    """Which member's live certificate holds each IP SAN in `wanted` (loopback aside: every
    member has it)."""
    taken: dict[policy.IPAddress, str] = {}
    for ip in wanted.ips:
        holder = None if ip.is_loopback else inventory.holder(str(ip))
        if holder is not None:
            taken[ip] = holder
    return taken


def _profile(name: str) -> Profile:
    try:
        return Profile(name)
    except ValueError:
        raise Invalid("profile must be peer, server or client", cause=str(name)[:16]) from None
