"""QUIC Initial decryption, checked against RFC 9001 Appendix A."""

from __future__ import annotations

import pytest

from auditor.probe.dissect import Malformed, client_hello_body
from auditor.probe.quic import CryptoStream, crypto_frames, initial_keys, protect_initial, unprotect_initials

from .rfc9001 import CLIENT_HP, CLIENT_IV, CLIENT_KEY, DCID, PACKET_NUMBER, PLAIN_HEADER, PLAIN_PAYLOAD, PROTECTED
from .traffic import quic_initial


def test_rfc9001_client_initial_keys() -> None:
    keys = initial_keys(DCID)
    assert (keys.key, keys.iv, keys.hp) == (CLIENT_KEY, CLIENT_IV, CLIENT_HP)


def test_rfc9001_sample_packet_decrypts_to_the_published_payload() -> None:
    (packet,) = unprotect_initials(PROTECTED)
    assert packet.packet_number == PACKET_NUMBER and packet.dcid == DCID and packet.scid == b""
    assert packet.payload == PLAIN_PAYLOAD
    ((offset, data),) = crypto_frames(packet.payload)
    assert offset == 0 and data[0] == 1
    hello = client_hello_body(data[4:])
    assert hello.sni == "example.com" and hello.alpn == ("alpn",) and hello.versions == (0x0304,)


def test_protecting_the_rfc_plaintext_gives_the_rfc_packet() -> None:
    assert PLAIN_HEADER[-4:] == PACKET_NUMBER.to_bytes(4, "big")
    assert protect_initial(DCID, b"", PLAIN_PAYLOAD, packet_number=PACKET_NUMBER, pn_len=4, pad_to=0) == PROTECTED


def test_tampered_packet_fails_authentication() -> None:
    broken = bytearray(PROTECTED)
    broken[600] ^= 1
    with pytest.raises(Malformed, match="authentication"):
        unprotect_initials(bytes(broken))


def test_client_hello_split_across_two_initials_is_reassembled() -> None:
    first, second = quic_initial("split.example", split=True)
    stream = CryptoStream()
    assert stream.feed(first) is None
    hello = stream.feed(second)
    assert hello is not None and hello.sni == "split.example" and hello.alpn == ("h3",)


def test_second_initial_arriving_first_still_reassembles() -> None:
    first, second = quic_initial("late.example", split=True)
    stream = CryptoStream()
    assert stream.feed(second) is None
    assert stream.feed(first).sni == "late.example"
