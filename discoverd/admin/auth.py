"""The admin token: read once from `--admin-token-file`, compared in constant time.

The admin API is authenticated by this token alone, never by a discovery token. The file holds
the token (surrounding whitespace ignored); like the service key it must not be readable by
everyone, and a short token is refused rather than guessed.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from discoverd.errors import Unauthorized

MIN_LENGTH = 16
MAX_LENGTH = 4096
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an Authorization header carries


class AdminTokenError(RuntimeError):
    """The admin token file is missing, unreadable, exposed or too weak."""


def load_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise AdminTokenError(
            f"cannot read the admin token file {path}: {exc.strerror or exc}"
        ) from None
    if mode & 0o007:
        raise AdminTokenError(
            f"the admin token file {path} is readable by everyone (mode {mode:o}): chmod 600"
        )
    token = text.strip()
    if not MIN_LENGTH <= len(token) <= MAX_LENGTH or not _TOKEN.fullmatch(token):
        raise AdminTokenError(
            f"the admin token in {path} must be {MIN_LENGTH} to {MAX_LENGTH} visible ASCII "
            "characters (e.g. `openssl rand -hex 32`)"
        )
    return token


def authorize(header: str | None, token: str) -> None:
    """Raise Unauthorized unless `header` is `Bearer <token>` (constant-time comparison)."""
    if not header:
        raise Unauthorized("the admin API needs an Authorization: Bearer <admin token> header")
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(errors="replace"), token.encode()
    ):
        raise Unauthorized("wrong admin token")
