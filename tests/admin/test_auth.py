"""The admin token file and the bearer check."""

from __future__ import annotations

import pytest

from discoverd.admin.auth import AdminTokenError, authorize, load_token
from discoverd.errors import Unauthorized

TOKEN = "s3cret-admin-token-0123"


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (None, 0o600, "cannot read the admin token file"),
        (TOKEN, 0o644, "is readable by everyone (mode 644): chmod 600"),
        ("short", 0o600, "must be 16 to 4096 visible ASCII characters"),
        ("", 0o600, "must be 16 to 4096 visible ASCII characters"),
        ("two words but long enough", 0o600, "must be 16 to 4096 visible ASCII characters"),
        ("ünïcödé-token-long-enough", 0o600, "must be 16 to 4096 visible ASCII characters"),
    ],
)
def test_bad_token_files_are_refused(tmp_path, content, mode, message):
    path = tmp_path / "admin.token"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    with pytest.raises(AdminTokenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_token(path)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_token_file(tmp_path, mode):
    path = tmp_path / "admin.token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(mode)
    assert load_token(path) == TOKEN


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_right_bearer(header):
    authorize(header, TOKEN)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN,
     "Bearer ünïcödé"],
)  # fmt: skip
def test_a_wrong_bearer(header):
    with pytest.raises(Unauthorized):
        authorize(header, TOKEN)
