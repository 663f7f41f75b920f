"""CSR signings per second over HTTP: discoverd's POST /api/v1/certs, then `cfssl serve`'s
POST /api/v1/cfssl/sign (the anchor: Debian's golang-cfssl 1.2.0), in the same run.

Both sign P-256 CSRs (CN bench-member, one IP SAN) with a P-256 CA key (ECDSA-SHA256), under
wrk -t2 -c32 for `duration` seconds:

    discoverd  every request enrolls a new (token, name) for the peer profile, as a name can be
               enrolled once per profile (a second time is a 409) and a token enrolls at most
               `size` names (then 403). So the bench makes tokens of size 999 and writes
               BODIES_PER_SECOND x duration unique JSON bodies, body k naming token k mod T and
               member n<k div T (the tokens fill evenly); wrk's Lua script sends each once.
               Any non-200 response fails the load loudly, with the statuses and the first body.
    cfssl      `cfssl serve` with an ECDSA P-256 CA made by `cfssl gencert -initca` and a default
               signing profile (signing, key encipherment, server auth, client auth; 2160h),
               at its default log level (info: it logs every signing, as discoverd at its
               default logs every request). One body, {"certificate_request": PEM} with member
               n0's CSR (SAN IP:10.0.0.1), repeated.

Before any load one request of each is checked (discoverd: 200 and a certificate for the name
with the SAN, signed by the returned CA; cfssl: success true and the same). During each load
the CPU seconds of the server processes (discoverd and etcd; cfssl) and of wrk are recorded.
What the two do per request differs: discoverd also validates the token, the name and the SAN
policy, and records each certificate in etcd (one transaction); cfssl 1.2 without -db-config
stores nothing.

When discoverd signs fewer per second than cfssl, one more (unscored) load runs with py-spy
(`py-spy record --gil -f raw`) on discoverd, and its samples are summarized: where the GIL time
goes by leaf function, by package, and by innermost discoverd function.

wrk missing: the aiohttp generator of bench.loadgen cycles through the same bodies (a floor).
cfssl missing: the anchor is skipped and says so (`make bench` installs it with apt as root).
Only loopback; cfssl, wrk and py-spy are stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import client, load, loadgen, report, servers
from bench.loadspec import Load, LoadResult
from bench.process import ManagedProcess, run_output
from discoverd.store.embedded import free_port

PROFILE = "peer"
SAN_IP = "10.0.0.1"  # member n0's, and the one of cfssl's CSR
CSR_NAME = "bench-member"
TOKEN_SIZE = servers.MAX_SIZE  # names n0..n998 per token
BODIES_PER_SECOND = 6_000  # unique enrollments written per second of load (60,000 for 10 s)
MIN_BODIES = 2_000
CHECK_TIMEOUT = aiohttp.ClientTimeout(total=10)
ONE_TOKEN_CONNECTIONS = 16  # the case: a cluster's members enrolling at the same moment
ONE_TOKEN_SHARE = 0.6  # of a token's TOKEN_SIZE names: the load must not run out of names
HEADERS = {"Content-Type": "application/json"}
CFSSL_EXPIRY = "2160h"
READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
TOOL_TIMEOUT = 30.0
PROFILE_SECONDS = 8.0  # py-spy -d (the load's duration when shorter, as with --quick)
PROFILE_EXTRA_LOAD = 2.0  # wrk runs this much longer than py-spy records
PROFILE_TOP = 12
PROFILE_GRACE = 30.0

# Each wrk thread reads the lines of BODIES that are its own (k mod THREADS == its id) and
# sends each once; `done` prints what every thread saw, for `_script_report`.
_ENROLL_LUA = """\
-- bench.signing: one unique enrollment per request (discoverd POST /api/v1/certs)
local BODIES = %(bodies)s
local THREADS = %(threads)d
local threads = {}
local count = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  thread:set("id", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  local n = 0
  for line in io.lines(BODIES) do
    if n %% THREADS == id then bodies[#bodies + 1] = line end
    n = n + 1
  end
  held = #bodies
  sent = 0
  wrapped = 0
  statuses = {}
  first_error = ""
end

function request()
  sent = sent + 1
  if sent > #bodies then
    sent = 1
    wrapped = wrapped + 1
  end
  return wrk.format(nil, nil, nil, bodies[sent])
end

function response(status, headers, body)
  if status ~= 200 then
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if first_error == "" then first_error = key .. " " .. string.sub(body or "", 1, 300) end
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local line = string.format("bench-thread %%d bodies %%d wrapped %%d",
      thread:get("id"), thread:get("held") or 0, thread:get("wrapped") or 0)
    for status, n in pairs(thread:get("statuses") or {}) do
      line = line .. string.format(" status-%%s %%d", status, n)
    end
    io.write(line .. "\\n")
    local first = thread:get("first_error") or ""
    if first ~= "" then io.write("bench-first-error " .. first:gsub("\\n", " ") .. "\\n") end
  end
end
"""

_SIGN_LUA = """\
-- bench.signing: the same CSR on every request (cfssl serve POST /api/v1/cfssl/sign)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(%(body)s, "rb"))
wrk.body = file:read("*a")
file:close()
"""


class SigningCheckError(RuntimeError):
    """A server did not sign the bench's CSR as expected."""


def tool_path(name: str) -> str | None:
    """`name` next to this Python (the venv's py-spy), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def plan(duration: float) -> dict[str, Any]:
    """What the certificate phases will run with, recorded before they start."""
    cfssl = shutil.which("cfssl")
    return {
        "duration_s": duration,
        "cert_profile": PROFILE,
        "csr": f"ECDSA P-256, CN {CSR_NAME}, SAN IP:{SAN_IP} (member n<i>: 10.0.<i div 250>."
        "<i mod 250 + 1>, its own key)",
        "load_tool": "wrk" if load.wrk_path() else "aiohttp fallback (wrk not installed)",
        "cfssl": {"path": cfssl, "version": cfssl_version(cfssl) if cfssl else None},
        "py_spy": tool_path("py-spy"),
    }


# -- what is sent ------------------------------------------------------------------------------


def member_ip(index: int) -> str:
    """The IP SAN of member n<index>: a cluster's members may not share one (discoverd refuses
    an IP another member's certificate names), so each has its own; n0's is SAN_IP."""
    return f"10.0.{index // 250}.{index % 250 + 1}"


def make_csr(ip: str = SAN_IP) -> str:
    """A P-256 CSR (CN bench-member, SAN IP:`ip`) with a key of its own, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CSR_NAME)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enroll_body(token: str, name: str, csr: str, profile: str = PROFILE) -> bytes:
    body = {"token": token, "name": name, "csr": csr, "profile": profile}
    return json.dumps(body, separators=(",", ":")).encode()


def enrollments(tokens: Sequence[str], csrs: Sequence[str], count: int) -> list[bytes]:
    """`count` unique bodies: body k enrolls member n<i> of token k mod T (T tokens, i = k div
    T) with csrs[i], whose IP SAN is member i's own (`member_ip`)."""
    if count > len(tokens) * TOKEN_SIZE:
        raise ValueError(f"{len(tokens)} tokens of size {TOKEN_SIZE} hold fewer than {count}")
    width = len(tokens)
    if len(csrs) < math.ceil(count / width):
        raise ValueError(f"{len(csrs)} CSRs for {math.ceil(count / width)} members per token")
    return [
        enroll_body(tokens[k % width], f"n{k // width}", csrs[k // width]) for k in range(count)
    ]


async def new_tokens(base: str, count: int, size: int = TOKEN_SIZE) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return [await client.new_token(session, base, size) for _ in range(count)]


def tokens_for(count: int) -> int:
    return math.ceil(count / TOKEN_SIZE)


# -- checks ------------------------------------------------------------------------------------


def check_certificate(
    cert_pem: str, ca_pem: str, common_name: str, ip: str = SAN_IP
) -> dict[str, Any]:
    """The issued certificate names `common_name` and the SAN, and `ca_pem` signed it."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError as exc:
        raise SigningCheckError(f"not a PEM certificate: {exc}") from exc
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [common_name]:
        raise SigningCheckError(f"certificate CN {names}, wanted {common_name}")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise SigningCheckError("certificate has no SAN extension") from None
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    if ip not in ips:  # discoverd adds loopback to peer and server certificates
        raise SigningCheckError(f"certificate IP SANs {ips} lack the CSR's {ip}")
    public = ca.public_key()
    algorithm = cert.signature_hash_algorithm
    if not isinstance(public, ec.EllipticCurvePublicKey) or algorithm is None:
        raise SigningCheckError("the CA key is not ECDSA")
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise SigningCheckError("the certificate's signature does not verify with the CA") from None
    return {
        "common_name": common_name,
        "ip_sans": ips,
        "signature": f"ecdsa-with-{algorithm.name}",
        "issuer": cert.issuer.rfc4514_string(),
        "der_bytes": len(cert.public_bytes(serialization.Encoding.DER)),
    }


async def check_discoverd(base: str, csr: str) -> dict[str, Any]:
    """Enroll `check` on a size-1 token of its own: 200, a certificate PEM for it, signed by
    the returned CA."""
    token = (await new_tokens(base, 1, size=1))[0]
    url = f"{base}/api/v1/certs"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=enroll_body(token, "check", csr), headers=HEADERS, timeout=CHECK_TIMEOUT
        ) as response,
    ):
        text = await response.text()
    if response.status != 200:
        raise SigningCheckError(f"POST /api/v1/certs -> {response.status}: {text[:300]}")
    found = json.loads(text)
    certificate = found.get("certificate", "")
    if not certificate.startswith("-----BEGIN CERTIFICATE-----"):
        raise SigningCheckError(f"POST /api/v1/certs answered no certificate PEM: {text[:300]}")
    checked = check_certificate(certificate, found.get("ca", ""), "check")
    return {"status": response.status, "response_bytes": len(text), **checked}


async def check_cfssl(url: str, body: bytes, ca_pem: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=HEADERS, timeout=CHECK_TIMEOUT) as response,
    ):
        text = await response.text()
    try:
        found = json.loads(text)
    except ValueError:
        found = {}
    if response.status != 200 or found.get("success") is not True:
        raise SigningCheckError(f"POST /api/v1/cfssl/sign -> {response.status}: {text[:300]}")
    certificate = found.get("result", {}).get("certificate", "")
    checked = check_certificate(certificate, ca_pem, CSR_NAME)
    return {"status": response.status, "success": True, "response_bytes": len(text), **checked}


# -- loads -------------------------------------------------------------------------------------


def _children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children (wrk, once it ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu(pid: int) -> float:
    return sum(servers.cpu_seconds(pid))


async def _load(
    spec: Load, scratch: Path, lua: str, bodies: Sequence[bytes]
) -> tuple[LoadResult, dict[str, Any]]:
    """wrk with the Lua script `lua`, or the aiohttp fallback cycling through `bodies`; the
    result and what the script reported (statuses other than 200, bodies exhausted)."""
    wrk = load.wrk_path()
    if wrk is None:
        return await loadgen.run(spec, bodies, HEADERS), {}
    script = scratch / f"{spec.name}.lua"
    script.write_text(lua)
    command = [
        wrk,
        f"-t{spec.threads}",
        f"-c{spec.connections}",
        f"-d{spec.duration:g}s",
        "--latency",
        "-s",
        str(script),
        spec.url,
    ]
    text = await load.wrk_output(command, spec.duration)
    return load.parse_wrk(text, spec, command), _script_report(text)


def _script_report(text: str) -> dict[str, Any]:
    """The `bench-` lines the enrollment script printed: per thread, the bodies it held, how
    often it ran out of them, and any status other than 200; the first such response."""
    threads: list[dict[str, Any]] = []
    first_error = None
    for line in text.splitlines():
        if line.startswith("bench-thread "):
            words = line.split()[1:]
            thread: dict[str, Any] = {"id": int(words[0]), "statuses": {}}
            for key, value in zip(words[1::2], words[2::2], strict=False):
                if key.startswith("status-"):
                    thread["statuses"][key.removeprefix("status-")] = int(value)
                else:
                    thread[key] = int(value)
            threads.append(thread)
        elif line.startswith("bench-first-error ") and first_error is None:
            first_error = line.removeprefix("bench-first-error ")[:300]
    if not threads:
        return {}
    statuses: Counter[str] = Counter()
    for thread in threads:
        statuses.update(thread["statuses"])
    return {
        "threads": threads,
        "bodies_per_thread": [thread.get("bodies", 0) for thread in threads],
        "wrapped": sum(thread.get("wrapped", 0) for thread in threads),
        "statuses": dict(statuses),
        "first_error": first_error,
    }


async def _timed(
    spec: Load, scratch: Path, lua: str, bodies: Sequence[bytes], pids: dict[str, int]
) -> dict[str, Any]:
    """One load with the CPU seconds of `pids` and of the load generator during it."""
    before = {name: _cpu(pid) for name, pid in pids.items()}
    children = _children_cpu()
    started = time.monotonic()
    result, script = await _load(spec, scratch, lua, bodies)
    wall = time.monotonic() - started
    cpu = {name: round(_cpu(pid) - before[name], 2) for name, pid in pids.items()}
    found = result.as_dict()
    found["signings_per_s"] = result.requests_per_s
    found["load_cpu_s"] = {**cpu, "load_generator": round(_children_cpu() - children, 2)}
    found["load_cpu_s"]["wall"] = round(wall, 2)
    if load.wrk_path() is None:
        found["load_cpu_s"]["load_generator"] = None  # the fallback runs in this process
    if result.requests:
        found["cpu_us_per_signing"] = {
            name: round(seconds / result.requests * 1e6, 1) for name, seconds in cpu.items()
        }
    found["cores_busy"] = {
        name: round(seconds / max(result.duration_s, 1e-9), 2) for name, seconds in cpu.items()
    }
    if script:
        found["script"] = script
    return found


def _fail_on_rejections(found: dict[str, Any], what: str) -> None:
    """Every request must have been answered 200, from a body never sent before."""
    script = found.get("script", {})
    if found["non_2xx"] or script.get("statuses"):
        reused = (
            f"; bodies sent again {script['wrapped']} times: raise BODIES_PER_SECOND"
            if script.get("wrapped")
            else ""
        )
        raise RuntimeError(
            f"{what}: {found['non_2xx']} of {found['requests']} responses were not 2xx "
            f"(statuses {script.get('statuses', '?')}{reused}; first: "
            f"{script.get('first_error')}) at {found['requests_per_s']:,.0f}/s"
        )
    if script.get("wrapped"):
        raise RuntimeError(
            f"{what}: wrk ran out of unique bodies ({script['bodies_per_thread']} per thread) "
            f"at {found['requests_per_s']:,.0f}/s: raise BODIES_PER_SECOND"
        )


async def _issued(base: str) -> float:
    async with aiohttp.ClientSession() as session:
        samples = await client.metrics(session, base)
    return client.metric_value(samples, "discoverd_certs_issued_total")


async def make_cas(base: str, tokens: Sequence[str]) -> float:
    """GET each token's ca.pem, which makes its CA (a key pair, sealed, stored in etcd), so the
    load measures signing and not CA creation (cfssl's CA, too, exists before its load); the
    mean milliseconds per CA."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for token in tokens:
            url = f"{base}/api/v1/clusters/{token}/ca.pem"
            async with session.get(url, timeout=CHECK_TIMEOUT) as response:
                text = await response.text()
                if response.status != 200 or "BEGIN CERTIFICATE" not in text:
                    raise SigningCheckError(f"GET ca.pem -> {response.status}: {text[:200]}")
    return (time.perf_counter() - started) * 1000 / max(len(tokens), 1)


async def _prepare(
    stack: servers.Stack, scratch: Path, count: int, name: str
) -> tuple[list[bytes], Path, dict[str, Any]]:
    """Tokens with their CAs, and `count` unique enrollment bodies written one per line (one
    CSR per member index, each with its own IP SAN, shared by the tokens)."""
    tokens = await new_tokens(stack.url, tokens_for(count))
    ca_ms = await make_cas(stack.url, tokens)
    members = math.ceil(count / len(tokens))
    csrs = await asyncio.to_thread(lambda: [make_csr(member_ip(i)) for i in range(members)])
    bodies = enrollments(tokens, csrs, count)
    path = scratch / f"{name}.bodies"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    made = {"bodies": count, "tokens": len(tokens), "token_size": TOKEN_SIZE}
    return bodies, path, {**made, "ca_made_ms_each": round(ca_ms, 1)}


def _enroll_lua(bodies: Path, threads: int) -> str:
    return _ENROLL_LUA % {"bodies": json.dumps(str(bodies)), "threads": threads}


async def discoverd_side(
    stack: servers.Stack, scratch: Path, duration: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """Check one enrollment, then wrk unique enrollments at discoverd for `duration` s."""
    csr = make_csr()
    (scratch / "bench.csr").write_text(csr)
    checked = await check_discoverd(stack.url, csr)
    count = max(MIN_BODIES, math.ceil(duration * BODIES_PER_SECOND))
    bodies, path, made = await _prepare(stack, scratch, count, "certs-discoverd")
    spec = Load("certs_discoverd", f"{stack.url}/api/v1/certs", "POST", duration)
    say(
        f"  wrk: {count:,} unique enrollments over {made['tokens']} tokens of size "
        f"{TOKEN_SIZE} (their CAs made first, {made['ca_made_ms_each']:.0f} ms each)"
    )
    issued = await _issued(stack.url)
    pids = {"discoverd": stack.pid, "etcd": stack.etcd_pid}
    found = await _timed(spec, scratch, _enroll_lua(path, spec.threads), bodies, pids)
    found["certificates_issued"] = int(await _issued(stack.url) - issued)
    found.update(
        {
            "server": "discoverd",
            "check": checked,
            **made,
            "request_bytes": len(bodies[0]),
        }
    )
    _fail_on_rejections(found, "POST /api/v1/certs")
    cpu = found["load_cpu_s"]
    say(
        f"    {found['signings_per_s']:,.0f} signings/s, p50 {found['p50_ms']:.1f} ms, "
        f"CPU discoverd {cpu['discoverd']} s + etcd {cpu['etcd']} s"
    )
    return found


async def one_token_side(
    stack: servers.Stack, scratch: Path, interleaved: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """ONE_TOKEN_CONNECTIONS connections enrolling into one token at once, as a cluster's
    members do: a token holds TOKEN_SIZE names, so the load runs for the whole seconds that
    about ONE_TOKEN_SHARE of them take at the `interleaved` rate (at least one). Every answer
    must be 200, and the rate is reported as a ratio to the interleaved one."""
    seconds = max(1, math.floor(TOKEN_SIZE * ONE_TOKEN_SHARE / max(interleaved, 1.0)))
    bodies, path, made = await _prepare(stack, scratch, TOKEN_SIZE, "certs-one-token")
    spec = Load(
        "certs_one_token",
        f"{stack.url}/api/v1/certs",
        "POST",
        seconds,
        threads=2,
        connections=ONE_TOKEN_CONNECTIONS,
    )
    say(f"  wrk -c{ONE_TOKEN_CONNECTIONS}: one token of size {TOKEN_SIZE} for {seconds} s")
    pids = {"discoverd": stack.pid, "etcd": stack.etcd_pid}
    found = await _timed(spec, scratch, _enroll_lua(path, spec.threads), bodies, pids)
    found.update({"server": "discoverd", **made, "connections": ONE_TOKEN_CONNECTIONS})
    found["ratio_to_interleaved"] = round(found["signings_per_s"] / max(interleaved, 1.0), 3)
    _fail_on_rejections(found, "POST /api/v1/certs, one token")
    say(
        f"    {found['signings_per_s']:,.0f} signings/s "
        f"({found['ratio_to_interleaved']:.2f}x the interleaved rate), no failures"
    )
    return found


async def cfssl_side(scratch: Path, duration: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Start `cfssl serve` with a fresh P-256 CA, check one signing, wrk it, stop it."""
    binary = shutil.which("cfssl")
    if binary is None:
        return {"skipped": "cfssl not installed (Debian golang-cfssl; `make bench` installs it)"}
    csr_path = scratch / "bench.csr"
    csr = csr_path.read_text() if csr_path.exists() else make_csr()
    body = json.dumps({"certificate_request": csr}).encode()
    body_path = scratch / "cfssl-sign.json"
    body_path.write_bytes(body)
    cfssl = Cfssl(binary, scratch / "cfssl")
    try:
        cfssl.start()  # `cfssl gencert -initca` (tens of ms), then Popen
        checked = await cfssl.wait_ready(body)
        spec = Load("certs_cfssl", f"{cfssl.url}/api/v1/cfssl/sign", "POST", duration)
        lua = _SIGN_LUA % {"body": json.dumps(str(body_path))}
        found = await _timed(spec, scratch, lua, [body], {"cfssl": cfssl.pid})
    finally:
        cfssl.stop()
    found.update(
        {
            "server": "cfssl serve",
            "version": cfssl_version(binary),
            "command": " ".join(cfssl.command),
            "config": cfssl.config(),
            "check": checked,
            "request_bytes": len(body),
            "log": cfssl.log_tail(),
        }
    )
    if found["non_2xx"]:
        raise RuntimeError(
            f"POST /api/v1/cfssl/sign: {found['non_2xx']} of {found['requests']} responses "
            f"were not 2xx; cfssl log: {found['log']}"
        )
    say(
        f"    {found['signings_per_s']:,.0f} signings/s, p50 {found['p50_ms']:.1f} ms, "
        f"cfssl {found['load_cpu_s']['cfssl']} s CPU"
    )
    return found


# -- cfssl -------------------------------------------------------------------------------------


def cfssl_version(binary: str) -> str:
    try:
        done = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in done.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class Cfssl(ManagedProcess):
    """`cfssl serve` on 127.0.0.1:<free port> with a CA made here, stopped by pid."""

    name = "cfssl"  # stopped within process.STOP_TIMEOUT (10 s)

    def __init__(self, binary: str, folder: Path) -> None:
        super().__init__(folder / "cfssl.log")
        self.binary = binary
        self.folder = folder
        self.port = 0
        self.ca_pem = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def config() -> dict[str, Any]:
        usages = ["signing", "key encipherment", "server auth", "client auth"]
        return {"signing": {"default": {"usages": usages, "expiry": CFSSL_EXPIRY}}}

    def make_ca(self) -> tuple[Path, Path]:
        """An ECDSA P-256 CA from `cfssl gencert -initca` (as discoverd's CAs are P-256)."""
        request = self.folder / "ca-csr.json"
        request.write_text(
            json.dumps({"CN": "bench cfssl CA", "key": {"algo": "ecdsa", "size": 256}})
        )
        done = subprocess.run(
            [self.binary, "gencert", "-initca", str(request)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        try:
            made = json.loads(done.stdout)
            self.ca_pem, key = made["cert"], made["key"]
        except (ValueError, KeyError):
            raise RuntimeError(f"cfssl gencert -initca failed: {done.stderr[-400:]}") from None
        cert_path, key_path = self.folder / "ca.pem", self.folder / "ca-key.pem"
        cert_path.write_text(self.ca_pem)
        key_path.touch(mode=0o600)
        key_path.write_text(key)
        return cert_path, key_path

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cert, key = self.make_ca()
        config = self.folder / "config.json"
        config.write_text(json.dumps(self.config()))
        self.port = free_port()
        self.command = [
            self.binary,
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-ca",
            str(cert),
            "-ca-key",
            str(key),
            "-config",
            str(config),
        ]  # its default log level, as discoverd runs at its own
        self.launch()

    async def wait_ready(self, body: bytes) -> dict[str, Any]:
        """Poll one signing until it succeeds (bounded); its check."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise SigningCheckError(f"cfssl serve exited: {self.log_tail()}")
            try:
                return await check_cfssl(f"{self.url}/api/v1/cfssl/sign", body, self.ca_pem)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(POLL_INTERVAL)
        raise SigningCheckError(f"cfssl serve not ready after {READY_TIMEOUT:.0f} s: {last}")


# -- the profile -------------------------------------------------------------------------------


async def profile_discoverd(
    stack: servers.Stack,
    scratch: Path,
    duration: float,
    rate: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """py-spy on discoverd during one more (unscored) enrollment load, summarized."""
    py_spy = tool_path("py-spy")
    if py_spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    seconds = min(PROFILE_SECONDS, duration)
    length = seconds + PROFILE_EXTRA_LOAD
    count = max(MIN_BODIES, math.ceil(rate * length * 2))  # twice what the scored run managed
    bodies, path, _ = await _prepare(stack, scratch, count, "certs-profile")
    spec = Load("certs_profile", f"{stack.url}/api/v1/certs", "POST", length)
    output = scratch / "discoverd.pyspy.raw"
    command = [py_spy, "record", "--gil", "-f", "raw", "-d", f"{seconds:g}"]
    command += ["-p", str(stack.pid), "-o", str(output)]
    say(f"  py-spy record --gil -d {seconds:g} on discoverd under {count:,} enrollments")
    loading = asyncio.create_task(_load(spec, scratch, _enroll_lua(path, spec.threads), bodies))
    try:
        spied = await run_output(command, seconds + PROFILE_GRACE, tail=None)
    except BaseException:
        with contextlib.suppress(Exception):
            await loading  # wrk ends by itself (and is killed by pid past its grace)
        raise
    result, script = await loading
    if not output.exists():
        raise RuntimeError(f"py-spy wrote no profile: {spied[-400:]}")
    kept = report.RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.pyspy.raw"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(output, kept)  # for a flame graph: flamegraph.pl or speedscope
    summary = summarize_profile(output.read_text())
    summary.update(
        {
            "command": " ".join([*command[:-4], "-p", "<discoverd pid>"]),
            "py_spy_said": spied.strip().splitlines()[-2:],
            "load": {
                "signings_per_s": result.requests_per_s,
                "requests": result.requests,
                "non_2xx": result.non_2xx,
                "statuses": script.get("statuses", {}),
            },
            "raw": str(kept),
        }
    )
    return summary


def discoverd_files() -> dict[str, str]:
    """discoverd's source files (`discoverd/store/gateway.py`) by each path suffix py-spy may
    show for them: it shortens some to `gateway.py`. A suffix two files share maps to
    `discoverd/…/<suffix>`."""
    package = Path(__file__).resolve().parent.parent / "discoverd"
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).as_posix().split("/")
        for start in range(len(parts)):
            suffix = "/".join(parts[start:])
            full = "/".join(parts)
            found[suffix] = full if found.get(suffix, full) == full else f"discoverd/…/{suffix}"
    return found


def _frame(frame: str, ours: dict[str, str]) -> tuple[str, str]:
    """(function, file) of one py-spy frame `function (file:line)`, discoverd's files named
    from the package root."""
    function, _, where = frame.rpartition(" (")
    if not function:
        return frame, ""
    path = where.rstrip(")").rpartition(":")[0]
    return function, ours.get(path, path)


def _area(path: str) -> str:
    """The package a file belongs to: `discoverd/certs`, `cryptography`, `asyncio`, ..."""
    parts = path.split("/")
    if parts[0] == "discoverd" and len(parts) > 2:
        return "/".join(parts[:2])
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return parts[0].removesuffix(".py") if parts and parts[0] else "?"


def _thread(frames: list[tuple[str, str]]) -> str:
    """Which thread a stack ran on: the event loop's, the etcd gateway's pool, another."""
    files = {path for _, path in frames}
    if frames[0][1] != "threading.py":
        return "main thread (event loop)"
    if "discoverd/store/gateway.py" in files and "concurrent/futures/thread.py" in files:
        return "etcd gateway pool (etcd3gw, requests)"
    if "concurrent/futures/thread.py" in files:
        return "other executor threads"
    return "other threads"


def _top(counter: Counter[str], total: int) -> list[dict[str, Any]]:
    return [
        {"what": what, "samples": n, "pct": round(100 * n / total, 1)}
        for what, n in counter.most_common(PROFILE_TOP)
    ]


def summarize_profile(raw: str) -> dict[str, Any]:
    """A py-spy `-f raw` profile (one `frame;frame;... count` line per stack) as: the thread
    that held the GIL, the leaf functions (self time), the packages of the leaves, the
    discoverd functions on the stack (inclusive), and each stack charged to its innermost
    discoverd function (that function and the library code it called), in percent."""
    leaf: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    files = discoverd_files()
    total = 0
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        count = int(number)
        total += count
        frames = [_frame(frame, files) for frame in stack.split(";")]
        threads[_thread(frames)] += count
        function, path = frames[-1]
        leaf[f"{function} ({path})"] += count
        areas[_area(path)] += count
        ours = [
            f"{function} ({path})" for function, path in frames if path.startswith("discoverd/")
        ]
        for name in set(ours):
            inclusive[name] += count
        owner[ours[-1] if ours else f"(outside discoverd) {_area(path)}"] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "by_thread": _top(threads, total),
        "self": _top(leaf, total),
        "by_package": _top(areas, total),
        "discoverd_inclusive": _top(inclusive, total),
        "by_innermost_discoverd_function": _top(owner, total),
    }
