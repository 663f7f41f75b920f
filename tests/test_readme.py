"""The README is true: every serve flag is documented, and its recipes fail loudly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from discoverd.cli import _SERVE_FLAGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# `--etcd-password[-file]` documents both `--etcd-password` and `--etcd-password-file`.
FLAGS_SHOWN = re.sub(r"(--[\w-]+)\[(-[\w-]+)\]", r"\1` `\1\2`", README)


@pytest.mark.parametrize("flag", list(_SERVE_FLAGS))
def test_every_serve_flag_is_in_the_readme(flag):
    assert re.search(rf"`{re.escape(flag)}[ `]", FLAGS_SHOWN), f"{flag} is not documented"


def test_recipes_never_write_jq_null_into_a_file():
    """`jq -r .certificate > peer.pem` writes the literal `null` on any error: use `jq -e`."""
    for line in README.splitlines():
        if "jq " in line and ">" in line.split("jq ", 1)[1]:
            assert re.search(r"jq -\w*e", line), line


def test_hand_bootstrap_exits_on_a_full_cluster():
    assert "--discovery-fallback exit" in README
