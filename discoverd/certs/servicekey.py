"""The service key: 32 bytes that seal every cluster's CA key (AES-256-GCM).

Given as `DISCOVERD_SERVICE_KEY` (base64) or kept in a file (`--service-key-file`, default
`<data-dir>/service.key`, created with mode 0600 on first start, with a warning to back it up:
losing it loses every CA). Replicas that share one etcd must share one service key: mount the
same Secret in each.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_BYTES = 32


class ServiceKeyError(RuntimeError):
    """The service key is missing, unreadable or malformed."""


def decode(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceKeyError("the service key must be base64 of 32 random bytes") from exc
    if len(key) != KEY_BYTES:
        raise ServiceKeyError(f"the service key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def load_or_create(path: Path, *, create: bool) -> bytes:
    """The key in `path`; made (0600, never overwritten) if absent and `create` is true."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            logger.warning(
                "NEW SERVICE KEY created at %s. BACK IT UP NOW, apart from the etcd backups: it "
                "seals every cluster's CA key, and if it is lost every CA is lost with it (no "
                "certificate can be issued, renewed or revoked for any existing cluster).",
                path,
            )
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text()
    except OSError as exc:
        raise ServiceKeyError(f"cannot read the service key {path}: {exc.strerror}") from exc
    if mode & 0o007:  # group access is how secret volumes share a key with a service account
        raise ServiceKeyError(
            f"the service key {path} is readable by everyone (mode {mode:o}): chmod 600"
        )
    return decode(text)
