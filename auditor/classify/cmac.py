"""AES-CMAC (NIST SP 800-38B, RFC 4493) of many short messages at once, truncated to 64 bits.

The fingerprint MAC. One message at a time, any keyed hash costs a Python call per
token (~0.5 us), and a 10 MB body holds a million tokens. Here OpenSSL's AES runs one
ECB call per block position over every message together, and numpy does the rest of
CMAC (CBC chaining, the 10* padding, the K1/K2 subkey of the last block), so a token
costs a few vector operations. The messages are read in place from one buffer by
(start, length), through an unaligned little-endian 64-bit view.

Checked against the SP 800-38B / RFC 4493 known answers and against the `cryptography`
CMAC (OpenSSL) on random messages: tests/classify/test_classify_cmac.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
PAD = BLOCK  # readable bytes a buffer must hold past the end of its last message

_U64 = np.dtype("<u8")
_V16 = np.dtype("V16")  # one block, opaque: numpy gathers these as fast as integers
_MORE = BLOCK + 1  # "more than one block left": a block read whole, no pad, no subkey


def _pairs(rows: list[tuple[int, int]]) -> np.ndarray:
    """(low word, high word) pairs as V16 blocks, for a table indexed by bytes left."""
    return np.array(rows, dtype=_U64).view(_V16).ravel()


# by bytes left in the message from this block on (0..16, or _MORE): the bytes of the block kept
_KEEP = _pairs([((1 << (8 * min(r, 8))) - 1, (1 << (8 * min(max(r - 8, 0), 8))) - 1) for r in range(_MORE + 1)])


def _dbl(block: bytes) -> bytes:
    """Doubling in GF(2^128), the subkey step of CMAC."""
    n = int.from_bytes(block, "big") << 1
    if n >> 128:
        n = (n ^ 0x87) & ((1 << 128) - 1)
    return n.to_bytes(BLOCK, "big")


class Cmac64:
    """AES-CMAC truncated to its leftmost 64 bits, for a key of 16, 24 or 32 bytes."""

    def __init__(self, key: bytes):
        self._cipher = Cipher(algorithms.AES(key), modes.ECB())
        enc = self._cipher.encryptor()
        k1 = _dbl(enc.update(bytes(BLOCK)))
        k2 = _dbl(k1)
        w1, w2 = np.frombuffer(k1, _U64), np.frombuffer(k2, _U64)
        # what the last block is XORed with besides the message: the 0x80 pad byte (when
        # the block is short) and K1 (a full block) or K2 (a padded one)
        pad = [(0x80 << (8 * r) if r < 8 else 0, 0x80 << (8 * (r - 8)) if 8 <= r < BLOCK else 0) for r in range(BLOCK + 1)]
        sub = [w1 if r == BLOCK else w2 for r in range(BLOCK + 1)]
        self._add = _pairs([(p0 ^ int(k[0]), p1 ^ int(k[1])) for (p0, p1), k in zip(pad, sub)] + [(0, 0)])

    def one(self, message: bytes) -> int:
        """The tag of one message (for tests and small callers)."""
        return int(self.many(message + bytes(PAD), np.zeros(1, np.int64), np.array([len(message)], np.int64))[0])

    def many(self, buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Tags of buf[s : s + n] for each (s, n), as uint64 (the tag's first 8 bytes, big-endian).

        `buf` must hold PAD readable bytes past the end of every message (numpy's bounds
        check raises IndexError if it does not). Block b of every message still running
        goes through AES in one call; a message leaves after its last block."""
        blocks_at = np.ndarray(shape=(max(len(buf) - 15, 0),), dtype=_V16, buffer=buf, strides=(1,))
        enc = self._cipher.encryptor()  # one per call: an OpenSSL context is not shared across threads
        cipher = self._block(enc, blocks_at[starts], lengths, None)
        out = np.frombuffer(cipher, dtype=">u8")[0::2].astype(np.uint64)
        running = np.flatnonzero(lengths > BLOCK)
        chain = np.frombuffer(cipher, dtype=_V16)[running]
        b = 1
        while len(running):
            cipher = self._block(enc, blocks_at[starts[running] + BLOCK * b], lengths[running] - BLOCK * b, chain)
            out[running] = np.frombuffer(cipher, dtype=">u8")[0::2]
            more = lengths[running] > BLOCK * (b + 1)
            running, chain = running[more], np.frombuffer(cipher, dtype=_V16)[more]
            b += 1
        return out

    def _block(self, enc: Any, block: np.ndarray, left: np.ndarray, chain: np.ndarray | None) -> bytes:
        """AES of each message block (V16, `left` bytes of the message from it on), padded
        and XORed with the subkey when it is the last, and with the chaining value."""
        r = np.minimum(left, _MORE)
        x = block.view(_U64).reshape(-1, 2)
        x &= _KEEP[r].view(_U64).reshape(-1, 2)
        x ^= self._add[r].view(_U64).reshape(-1, 2)
        if chain is not None:
            x ^= chain.view(_U64).reshape(-1, 2)
        return enc.update(x.data)
