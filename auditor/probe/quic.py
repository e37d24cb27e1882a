"""QUIC Initial packets: the keys are public (RFC 9001 section 5.2, RFC 9369 for v2),
so anyone on the path can read the ClientHello, and with it the server name a
client asks for over UDP 443. That is what lets the probe see QUIC egress.

`protect_initial` is the inverse, used by the tests and the simulator to build
Initials exactly as a client would.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from auditor.probe.dissect import ClientHello, Malformed, client_hello_body

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
_SALTS = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
_LABELS = {VERSION_1: (b"quic key", b"quic iv", b"quic hp"), VERSION_2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")}
_INITIAL_TYPE = {VERSION_1: 0, VERSION_2: 1}
MAX_CRYPTO = 65536


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class InitialKeys:
    key: bytes
    iv: bytes
    hp: bytes


def initial_secret(dcid: bytes, version: int = VERSION_1) -> bytes:
    return hmac.new(_SALTS[version], dcid, hashlib.sha256).digest()


def initial_keys(dcid: bytes, version: int = VERSION_1, *, server: bool = False) -> InitialKeys:
    """Client (or server) Initial key, IV and header-protection key for a DCID."""
    secret = _expand_label(initial_secret(dcid, version), b"server in" if server else b"client in", 32)
    key_label, iv_label, hp_label = _LABELS[version]
    return InitialKeys(_expand_label(secret, key_label, 16), _expand_label(secret, iv_label, 12), _expand_label(secret, hp_label, 16))


def _mask(hp: bytes, sample: bytes) -> bytes:
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    return enc.update(sample) + enc.finalize()


def varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise Malformed("quic-varint-truncated")
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        raise Malformed("quic-varint-truncated")
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[pos + i]
    return value, pos + size


def encode_varint(value: int) -> bytes:
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def is_long_header(data: bytes) -> bool:
    return len(data) >= 7 and data[0] & 0xC0 == 0xC0 and int.from_bytes(data[1:5], "big") in _SALTS


@dataclass
class InitialPacket:
    version: int
    dcid: bytes
    scid: bytes
    packet_number: int
    payload: bytes  # decrypted frames


def unprotect_initials(datagram: bytes, original_dcid: bytes | None = None) -> list[InitialPacket]:
    """Every client Initial in a datagram (packets may be coalesced), decrypted.
    Raises Malformed for a broken header or a packet that fails authentication."""
    out: list[InitialPacket] = []
    pos = 0
    n = len(datagram)
    while pos + 7 <= n and datagram[pos] & 0x80:
        first = datagram[pos]
        version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
        if version not in _SALTS:
            break
        p = pos + 5
        dlen = datagram[p]
        if dlen > 20 or p + 1 + dlen >= n:
            raise Malformed("quic-dcid")
        dcid = datagram[p + 1 : p + 1 + dlen]
        p += 1 + dlen
        slen = datagram[p]
        if slen > 20 or p + 1 + slen > n:
            raise Malformed("quic-scid")
        scid = datagram[p + 1 : p + 1 + slen]
        p += 1 + slen
        ptype = (first >> 4) & 3
        if ptype == _INITIAL_TYPE[version]:
            tlen, p = varint(datagram, p)
            p += tlen
        length, p = varint(datagram, p)
        end = p + length
        if end > n or length < 20:
            raise Malformed("quic-length")
        if ptype == _INITIAL_TYPE[version]:
            out.append(_decrypt(datagram[pos:end], p - pos, version, dcid, scid, original_dcid))
        pos = end
    return out


def _decrypt(packet: bytes, pn_offset: int, version: int, dcid: bytes, scid: bytes, original: bytes | None) -> InitialPacket:
    last: Malformed | None = None
    for cid in (dcid, original) if original and original != dcid else (dcid,):
        keys = initial_keys(cid, version)
        mask = _mask(keys.hp, packet[pn_offset + 4 : pn_offset + 20])
        first = packet[0] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        pn_bytes = bytes(packet[pn_offset + i] ^ mask[1 + i] for i in range(pn_len))
        header = bytes([first]) + packet[1:pn_offset] + pn_bytes
        pn = int.from_bytes(pn_bytes, "big")
        nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
        try:
            payload = AESGCM(keys.key).decrypt(nonce, packet[pn_offset + pn_len :], header)
        except InvalidTag:
            last = Malformed("quic-initial-authentication")
            continue
        return InitialPacket(version, cid, scid, pn, payload)
    raise last or Malformed("quic-initial-authentication")


def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame; the frames an Initial may carry are skipped."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(payload)
    while pos < n:
        ftype, pos = varint(payload, pos)
        if ftype == 0x00 or ftype == 0x01:
            continue
        if ftype in (0x02, 0x03):
            _, pos = varint(payload, pos)
            _, pos = varint(payload, pos)
            count, pos = varint(payload, pos)
            _, pos = varint(payload, pos)
            for _ in range(min(count, 256) * 2):
                _, pos = varint(payload, pos)
            if ftype == 0x03:
                for _ in range(3):
                    _, pos = varint(payload, pos)
        elif ftype == 0x06:
            offset, pos = varint(payload, pos)
            length, pos = varint(payload, pos)
            if pos + length > n:
                raise Malformed("quic-crypto-length")
            out.append((offset, payload[pos : pos + length]))
            pos += length
        elif ftype in (0x1C, 0x1D):
            _, pos = varint(payload, pos)
            if ftype == 0x1C:
                _, pos = varint(payload, pos)
            rlen, pos = varint(payload, pos)
            pos += rlen
        else:
            raise Malformed("quic-initial-frame")
    return out


@dataclass
class CryptoStream:
    """The client's Initial CRYPTO stream for one connection, until a ClientHello is whole."""

    original_dcid: bytes | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    def feed(self, datagram: bytes) -> ClientHello | None:
        for packet in unprotect_initials(datagram, self.original_dcid):
            if self.original_dcid is None:
                self.original_dcid = packet.dcid
            for offset, data in crypto_frames(packet.payload):
                if offset + len(data) > MAX_CRYPTO:
                    raise Malformed("quic-crypto-too-long")
                if offset not in self.chunks:
                    self.chunks[offset] = data
                    self.size += len(data)
        stream = bytearray()
        for offset in sorted(self.chunks):
            if offset > len(stream):
                break
            stream += self.chunks[offset][len(stream) - offset :]
        if len(stream) < 4:
            return None
        if stream[0] != 1:
            raise Malformed("quic-not-clienthello")
        need = 4 + ((stream[1] << 16) | (stream[2] << 8) | stream[3])
        if len(stream) < need:
            return None
        return client_hello_body(bytes(stream[4:need]))


def protect_initial(
    dcid: bytes,
    scid: bytes,
    frames: bytes,
    *,
    packet_number: int = 0,
    pn_len: int = 4,
    version: int = VERSION_1,
    pad_to: int = 1200,
    token: bytes = b"",
) -> bytes:
    """A client Initial carrying `frames`, padded (PADDING frames) to `pad_to` bytes."""
    keys = initial_keys(dcid, version)
    first = 0xC0 | (_INITIAL_TYPE[version] << 4) | (pn_len - 1)
    head = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    head += encode_varint(len(token)) + token
    pn_bytes = packet_number.to_bytes(pn_len, "big")

    body = frames
    total = len(head) + 2 + pn_len + len(body) + 16
    if total < pad_to:
        body += bytes(pad_to - total)
    length = pn_len + len(body) + 16
    length_field = (length | 0x4000).to_bytes(2, "big") if length < 0x4000 else (length | 0x80000000).to_bytes(4, "big")
    header = head + length_field + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, body, header)
    pn_offset = len(header) - pn_len
    sample = sealed[4 - pn_len : 20 - pn_len]
    mask = _mask(keys.hp, sample)
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)


def crypto_frame(data: bytes, offset: int = 0) -> bytes:
    return b"\x06" + encode_varint(offset) + encode_varint(len(data)) + data
