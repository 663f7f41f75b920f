"""The service key file: made once (0600) with a loud warning to back it up, then only read."""

from __future__ import annotations

import logging

import pytest

from discoverd.certs import servicekey


def test_a_new_service_key_says_loudly_to_back_it_up(tmp_path, caplog):
    path = tmp_path / "data" / "service.key"
    with caplog.at_level(logging.WARNING, logger="discoverd.certs.servicekey"):
        key = servicekey.load_or_create(path, create=True)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage()
    assert "BACK IT UP" in record.getMessage() and "every CA is lost" in record.getMessage()
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == servicekey.KEY_BYTES

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="discoverd.certs.servicekey"):
        assert servicekey.load_or_create(path, create=True) == key  # read, not made again
    assert caplog.records == []


def test_a_named_key_file_that_is_missing_is_not_made(tmp_path):
    with pytest.raises(servicekey.ServiceKeyError, match="cannot read the service key"):
        servicekey.load_or_create(tmp_path / "missing.key", create=False)
    assert not (tmp_path / "missing.key").exists()
