"""Snapshots of the backing etcd, for `discoverd backup`: etcd's `Maintenance/Snapshot`, streamed
through its HTTP gateway (`POST /v3/maintenance/snapshot`, etcd >= 3.4) into a file.

The gateway answers with newline-delimited JSON, `{"result": {"blob": <base64>, ...}}` per chunk
(or `{"error": {...}}`); the bytes are etcd's database followed by its SHA-256, which etcd
appends as the last chunk and `etcdutl snapshot restore` checks. The hash is checked here too,
before the file is put in place: it is written to `<out>.part` (mode 0600: it holds every token),
fsynced and renamed, so a backup file that exists is a whole one. The first endpoint that
answers is snapshotted (any member of a cluster holds all the data).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

PATH = "/v3/maintenance/snapshot"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # between two chunks: etcd streams as it reads its database
_HASH = hashlib.sha256().digest_size


class SnapshotError(RuntimeError):
    """No endpoint produced a whole snapshot; the message says why."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    endpoint: str
    path: Path
    size: int  # bytes written, the trailing SHA-256 included


def save(endpoints: Sequence[str], out: Path) -> Snapshot:
    """Write a snapshot of the first endpoint that answers to `out` (replaced atomically)."""
    problems = []
    for endpoint in endpoints:
        try:
            return _save_from(endpoint.rstrip("/"), out)
        except requests.RequestException as exc:
            problems.append(f"{endpoint}: {_reason(exc)}")
    raise SnapshotError("cannot reach etcd: " + "; ".join(problems))


def _save_from(endpoint: str, out: Path) -> Snapshot:
    part = out.with_name(out.name + ".part")
    with requests.post(
        endpoint + PATH, data=b"{}", stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
    ) as response:
        if response.status_code != 200:
            raise SnapshotError(f"{endpoint} refused the snapshot: {_error_text(response)}")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise SnapshotError(f"cannot write {part}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                size = _copy(_blobs(endpoint, response), handle)
                handle.flush()
                os.fsync(handle.fileno())
            part.replace(out)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    return Snapshot(endpoint, out, size)


def _blobs(endpoint: str, response: requests.Response) -> Iterator[bytes]:
    for line in response.iter_lines(chunk_size=64 * 1024):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            if "error" in message:
                raise SnapshotError(f"{endpoint} failed the snapshot: {_message(message['error'])}")
            yield base64.b64decode(message["result"].get("blob", ""), validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise SnapshotError(f"{endpoint} sent something that is not a snapshot") from None


def _copy(blobs: Iterator[bytes], handle: Any) -> int:
    """Write every blob; check that the last 32 bytes are the SHA-256 of all before them."""
    digest, tail, size = hashlib.sha256(), b"", 0
    for blob in blobs:
        handle.write(blob)
        size += len(blob)
        data = tail + blob
        digest.update(data[:-_HASH])
        tail = data[-_HASH:]
    if size <= _HASH or digest.digest() != tail:
        raise SnapshotError(
            f"the snapshot is incomplete or corrupt ({size} bytes; its SHA-256 does not match)"
        )
    return size


def _message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
        return _message(body.get("error", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        return f"HTTP {response.status_code}"


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed: {exc}"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return str(exc)
