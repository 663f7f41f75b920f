"""A transport failure is put in words that name the likely mistake, whichever way the race
between a server's reply and its close went."""

from __future__ import annotations

import pytest
import requests

from discoverd.store.access import EtcdAccess, explain_transport

RESET = requests.ConnectionError(
    "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))"
)
REFUSED = requests.ConnectionError(
    "Failed to establish a new connection: [Errno 111] Connection refused"
)


@pytest.mark.parametrize(
    ("exc", "scheme", "words"),
    [
        (RESET, "https", "connection reset (if the endpoint does not speak TLS: an http:// endpoint given as https://?)"),
        (RESET, "http", "closed the connection without an answer (an https:// endpoint given as http://?)"),
        (REFUSED, "https", "connection refused"),
        (REFUSED, "http", "connection refused"),
    ],
)  # fmt: skip
def test_words_for_a_transport_failure(exc, scheme, words):
    assert explain_transport(exc, EtcdAccess(), scheme) == words
