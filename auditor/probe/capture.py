"""Where packets come from: pcap and pcapng files (gzip'd or not), or a live
interface through libpcap with a BPF prefilter so only what the probe needs
reaches Python.

Both sources yield `(time_us, linktype, frame, wire_length)`; pcap files also come
as blocks of records (`FileCapture.blocks`) for the engine's batched path, read in
4 MB chunks that are never copied. A file that ends mid-record, or a record that
lies about its size, stops the reader cleanly with `problem` set: everything
before it is still delivered. Live capture exposes the kernel's and libpcap's
drop counters, which the runner chains into the store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import select
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from struct import Struct
from typing import BinaryIO, NamedTuple

from pydantic import BaseModel

from auditor.errors import AuditorError
from auditor.probe.dissect import LINK_ETHERNET, LINK_SLL2

Frame = tuple[int, int, bytes, int]  # time in microseconds, linktype, captured bytes, length on the wire

CHUNK = 1 << 22
MAX_RECORD = 1 << 18  # larger than any snaplen libpcap uses: a bigger record means corruption
MAX_BLOCK = 1 << 24
BLOCK_RECORDS = 8192  # records per batch: numpy's fixed cost spread thin, events still move on often
DEFAULT_BPF = "ip or ip6 or (vlan and (ip or ip6))"


class Records(NamedTuple):
    """pcap records that one read brought in: `data` holds them, `offsets` says where
    each 16-byte record header starts. The batched path reads all their headers at once."""

    data: bytes
    offsets: list[int]
    linktype: int
    nano: bool  # fractions are nanoseconds
    endian: str  # struct byte order of the record headers: "<" or ">"

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Records `start` to `stop` as frames, for the per-packet path."""
        head = Struct(self.endian + "IIII").unpack_from
        data, linktype, nano = self.data, self.linktype, self.nano
        for off in self.offsets[start:stop]:
            sec, frac, incl, orig = head(data, off)
            yield (sec * 1_000_000 + (frac // 1000 if nano else frac), linktype, data[off + 16 : off + 16 + incl], orig)


class CaptureStats(BaseModel):
    """Counters as libpcap reports them: `dropped` by the kernel (buffer full),
    `if_dropped` by the interface or driver."""

    received: int = 0
    dropped: int = 0
    if_dropped: int = 0


class _Gunzip:
    """gzip without the all-or-nothing: a cut-off stream yields what it holds, and says so."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._buf = b""
        self._eof = False
        self.truncated = False

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n) and not self._eof:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                self._eof = True
                self.truncated = not self._z.eof
                break
            try:
                self._buf += self._z.decompress(chunk)
                while self._z.eof and self._z.unused_data:  # concatenated members
                    rest = self._z.unused_data
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self._buf += self._z.decompress(rest)
            except zlib.error as exc:
                raise OSError(f"corrupt gzip stream: {exc}") from exc
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        self._raw.close()


class _ReadAhead:
    """The file's next chunks, read by a thread while the engine works on the current
    one: the copy out of the page cache (and gzip's inflating) runs without the GIL,
    on another core. The thread starts at the first read, so a process forked before
    reading begins (the judging process) never inherits it. A read error reaches the
    reader where it asked for bytes, as the error it would have had reading itself."""

    def __init__(self, raw: BinaryIO | _Gunzip, depth: int = 2) -> None:
        self._raw = raw
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._piece = b""  # the chunk being read, unread from `_pos` on
        self._pos = 0
        self._eof = False

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._raw.read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, who raises it where it reads
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        """Queue `item`, waiting for room unless the reader has closed."""
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_piece(self) -> bool:
        """Move on to the next chunk; False at the end of the file (or once closed)."""
        if self._eof or self._stop.is_set():
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="capture-read-ahead", daemon=True)
            self._thread.start()
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._piece, self._pos = item, 0
        self._eof = not item
        return bool(item)

    def chunk(self) -> tuple[bytes, int]:
        """The unread rest of the current chunk, or the next one, with the offset its
        unread bytes start at, uncopied; (b"", 0) at the end of the file."""
        if self._pos >= len(self._piece) and not self._next_piece():
            return b"", 0
        piece, pos = self._piece, self._pos
        self._pos = len(piece)
        return piece, pos

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes (fewer only at the end of the file)."""
        parts: list[bytes] = []
        need = size
        while need > 0:
            if self._pos >= len(self._piece) and not self._next_piece():
                break
            take = self._piece[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._raw.close()


def _open(path: Path) -> BinaryIO | _Gunzip:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditorError(f"cannot open capture: {exc.strerror}", file=str(path), fix="check the path and permissions") from exc
    if fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        return _Gunzip(fh)
    fh.seek(0)
    return fh


class FileCapture:
    """pcap (micro- or nanosecond, either byte order) and pcapng, plain or gzip'd."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None  # set when the file ends early or is corrupt
        self.interface_drops = 0  # from pcapng interface statistics blocks
        self.packets = 0
        self._fh = _open(self.path)
        self._src = _ReadAhead(self._fh)
        try:
            head = self._fh.read(4)
        except OSError as exc:  # a gzip stream broken within its first megabyte
            self._fh.close()
            raise AuditorError(f"cannot read the capture: {exc}", file=str(self.path), fix="check the file; a damaged gzip stream cannot be read") from exc
        if len(head) < 4:
            self._fh.close()
            raise AuditorError("not a capture file: too short", file=str(self.path), fix="pass a pcap or pcapng file")
        self._head = head
        if head == b"\x0a\x0d\x0d\x0a":
            self.format = "pcapng"
        elif head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
            self.format = "pcap"
        else:
            self._fh.close()
            raise AuditorError(
                f"not a pcap or pcapng file (starts with {head.hex()})", file=str(self.path), fix="pass a pcap or pcapng capture, optionally gzip'd"
            )

    def close(self) -> None:
        self._src.close()

    def _refill(self, buf: bytes, off: int, count: int) -> tuple[bytes, bool]:
        """pcapng: the unread tail of `buf` plus the next chunk."""
        more = self._read(CHUNK, count)
        return buf[off:] + more, not more

    def _gzip_cut(self) -> None:
        if isinstance(self._fh, _Gunzip) and self._fh.truncated:
            self.problem = (self.problem + "; " if self.problem else "") + "gzip stream cut short (truncated capture)"

    def __enter__(self) -> FileCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[Frame]:
        """Every frame in order. A read error (a broken gzip stream) ends the iteration
        with `problem` set, like a truncated file."""
        if self.format == "pcap":
            return (frame for block in self._pcap() for frame in block.frames())
        return self._pcapng()

    def blocks(self) -> Iterator[Records]:
        """pcap files only: the records a read brought in, in blocks of at most
        BLOCK_RECORDS, for the engine's batched path (`Probe.feed_block`)."""
        if self.format != "pcap":
            raise ValueError("blocks() reads pcap files; pcapng goes through frames()")
        return self._pcap()

    def _pcap(self) -> Iterator[Records]:
        """Chunks as they are read, never copied: a record cut by the end of a chunk is
        completed with a read of its own and handed on alone, in its place."""
        rest = self._read(20, 0)
        if len(rest) < 20:
            self.problem = "pcap global header truncated"
            return
        magic = self._head
        endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        _, _, _, _, snaplen, network = Struct(endian + "HHiIII").unpack(rest)
        linktype = network & 0x0FFFFFFF
        limit = max(snaplen, MAX_RECORD)
        size_at = Struct(endian + "I").unpack_from
        count = 0
        buf, off = self._chunk(count)
        while buf:
            n = len(buf)
            offsets: list[int] = []
            append = offsets.append
            incl = 0
            while off + 16 <= n:  # the one loop that visits every record: its header's length only
                incl = size_at(buf, off + 8)[0]
                end = off + 16 + incl
                if end > n or incl > limit:
                    break
                append(off)
                off = end
            count += len(offsets)
            for i in range(0, len(offsets), BLOCK_RECORDS):
                yield Records(buf, offsets[i : i + BLOCK_RECORDS], linktype, nano, endian)
            if off == n:
                buf, off = self._chunk(count)
                continue
            cut = buf[off:]  # a record the chunk ends inside (or a corrupt one)
            del buf, offsets
            if len(cut) < 16:
                cut += self._read(16 - len(cut), count)
                if len(cut) < 16:
                    self.problem = f"file ends inside record {count + 1}: {len(cut)} stray bytes (truncated capture)"
                    break
                incl = size_at(cut, 8)[0]
            if incl > limit:
                self.problem = f"record {count + 1} claims {incl} bytes (snaplen {snaplen}): corrupt file"
                break
            cut += self._read(16 + incl - len(cut), count)
            if len(cut) < 16 + incl:
                self.problem = f"file ends inside record {count + 1}: {len(cut)} stray bytes (truncated capture)"
                break
            count += 1
            yield Records(cut, [0], linktype, nano, endian)
            buf, off = self._chunk(count)
        self._gzip_cut()
        self.packets = count

    def _read(self, size: int, count: int) -> bytes:
        """Up to `size` bytes (fewer only at the end); a read error (a broken gzip stream)
        ends the file like a truncation, with `problem` saying so."""
        try:
            return self._src.read(size)
        except OSError as exc:
            self.problem = f"read error after {count} packets: {exc}"
            return b""

    def _chunk(self, count: int) -> tuple[bytes, int]:
        """`_ReadAhead.chunk`, a read error handled as `_read` does."""
        try:
            return self._src.chunk()
        except OSError as exc:
            self.problem = f"read error after {count} packets: {exc}"
            return b"", 0

    def _pcapng(self) -> Iterator[Frame]:
        """Blocks read in chunks, so a capture of any size streams in bounded memory."""
        buf = self._head
        off = 0
        eof = False
        endian = "<"
        ifaces: list[tuple[int, int, int, int]] = []  # linktype, multiplier, divisor, offset seconds
        count = 0
        while True:
            n = len(buf)
            while off + 12 <= n:
                if buf[off : off + 4] == b"\x0a\x0d\x0d\x0a":
                    endian = "<" if buf[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                    ifaces = []
                btype, blen = Struct(endian + "II").unpack_from(buf, off)
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    self.packets = count
                    self.problem = f"pcapng block after packet {count} claims {blen} bytes: corrupt capture"
                    return
                if off + blen > n:
                    break
                frame = self._block(buf, off, btype, blen, endian, ifaces)
                if isinstance(frame, str):
                    self.packets = count
                    self.problem = frame
                    return
                if frame is not None:
                    count += 1
                    yield frame
                off += blen
            if eof:
                if off < n:
                    self.problem = f"file ends inside a pcapng block after packet {count} (truncated capture)"
                self._gzip_cut()
                break
            buf, eof = self._refill(buf, off, count)
            off = 0
        self.packets = count

    def _block(self, data: bytes, pos: int, btype: int, blen: int, endian: str, ifaces: list[tuple[int, int, int, int]]) -> Frame | str | None:
        """One pcapng block: a frame, None for a block that carries none, or a problem."""
        body = pos + 8
        if btype == 1 and blen >= 20:
            linktype = Struct(endian + "H").unpack_from(data, body)[0]
            mul, div, offs = 1, 1, 0
            for code, value in _options(data, body + 8, pos + blen - 4, endian):
                if code == 9 and value:
                    res = value[0]
                    mul, div = 1_000_000, 2 ** (res & 0x7F) if res & 0x80 else 10 ** (res & 0x7F)
                elif code == 14 and len(value) == 8:
                    offs = Struct(endian + "q").unpack(value)[0]
            ifaces.append((linktype, mul, div, offs))
        elif btype in (6, 2) and blen >= 32:
            if btype == 6:
                iface, hi, lo, caplen, orig = Struct(endian + "IIIII").unpack_from(data, body)
            else:
                iface, _, hi, lo, caplen, orig = Struct(endian + "HHIIII").unpack_from(data, body)
            start = body + 20
            if iface >= len(ifaces) or start + caplen > pos + blen:
                return f"pcapng packet block is inconsistent (interface {iface}, {caplen} bytes)"
            linktype, mul, div, offs = ifaces[iface]
            return (((hi << 32) | lo) * mul // div + offs * 1_000_000, linktype, data[start : start + caplen], orig)
        elif btype == 3 and blen >= 16 and ifaces:
            orig = Struct(endian + "I").unpack_from(data, body)[0]
            return (0, ifaces[0][0], data[body + 4 : body + 4 + min(orig, blen - 16)], orig)
        elif btype == 5 and blen >= 24:
            for code, value in _options(data, body + 12, pos + blen - 4, endian):
                if code == 5 and len(value) == 8:
                    self.interface_drops += Struct(endian + "Q").unpack(value)[0]
        return None


def _options(data: bytes, pos: int, end: int, endian: str) -> Iterator[tuple[int, bytes]]:
    head = Struct(endian + "HH").unpack_from
    while pos + 4 <= end:
        code, length = head(data, pos)
        if code == 0:
            return
        yield code, data[pos + 4 : pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)


# ---------------------------------------------------------------- live capture (libpcap)


class _Header(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _Stat(ctypes.Structure):
    _fields_ = [("recv", ctypes.c_uint), ("drop", ctypes.c_uint), ("ifdrop", ctypes.c_uint)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.c_void_p)]


def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap")
    if not name:
        raise AuditorError("libpcap is not installed", fix="apt-get install -y libpcap0.8 (Debian) or your system's libpcap")
    lib = ctypes.CDLL(name)
    p = ctypes.c_void_p
    sigs = {
        "pcap_create": (p, [ctypes.c_char_p, ctypes.c_char_p]),
        "pcap_open_dead": (p, [ctypes.c_int, ctypes.c_int]),
        "pcap_set_snaplen": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_set_promisc": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_set_timeout": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_set_buffer_size": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_set_immediate_mode": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_activate": (ctypes.c_int, [p]),
        "pcap_geterr": (ctypes.c_char_p, [p]),
        "pcap_statustostr": (ctypes.c_char_p, [ctypes.c_int]),
        "pcap_compile": (ctypes.c_int, [p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]),
        "pcap_setfilter": (ctypes.c_int, [p, ctypes.POINTER(_Program)]),
        "pcap_freecode": (None, [ctypes.POINTER(_Program)]),
        "pcap_next_ex": (ctypes.c_int, [p, ctypes.POINTER(ctypes.POINTER(_Header)), ctypes.POINTER(ctypes.c_void_p)]),
        "pcap_stats": (ctypes.c_int, [p, ctypes.POINTER(_Stat)]),
        "pcap_datalink": (ctypes.c_int, [p]),
        "pcap_set_datalink": (ctypes.c_int, [p, ctypes.c_int]),
        "pcap_close": (None, [p]),
        "pcap_setnonblock": (ctypes.c_int, [p, ctypes.c_int, ctypes.c_char_p]),
        "pcap_get_selectable_fd": (ctypes.c_int, [p]),
    }
    for fn, (res, args) in sigs.items():
        func = getattr(lib, fn)
        func.restype = res
        func.argtypes = args
    return lib


def _compile(lib: ctypes.CDLL, handle: int, bpf: str) -> _Program:
    """`bpf` compiled for `handle`'s link type; the caller frees it (pcap_freecode)."""
    prog = _Program()
    if lib.pcap_compile(handle, ctypes.byref(prog), bpf.encode(), 1, 0xFFFFFFFF) < 0:
        detail = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
        raise AuditorError(f"bad BPF filter {bpf!r}: {detail}", fix="use tcpdump filter syntax, e.g. 'tcp or udp'")
    return prog


def check_capture(iface: str, bpf: str | None) -> None:
    """The errors of use a live capture would meet, found before anything starts and without
    privileges: an interface this machine does not have, a filter libpcap cannot compile."""
    if iface != "any":
        try:
            socket.if_nametoindex(iface)
        except OSError:
            raise AuditorError(f"no interface {iface!r} on this machine", fix="pass --iface with one that `ip link` lists, or any") from None
    if not bpf or bpf == DEFAULT_BPF:
        return
    lib = _libpcap()
    handle = lib.pcap_open_dead(LINK_SLL2 if iface == "any" else LINK_ETHERNET, 4096)
    try:
        prog = _compile(lib, handle, bpf)
        lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)


class LiveCapture:
    """One libpcap handle: snaplen large enough for a ClientHello, a kernel buffer
    sized for bursts, a read timeout so the caller regains control regularly."""

    def __init__(
        self, iface: str = "any", bpf: str | None = DEFAULT_BPF, *, snaplen: int = 4096, buffer_mb: int = 64, timeout_ms: int = 100
    ) -> None:
        self.iface = iface
        self.bpf = bpf
        self._lib = _libpcap()
        errbuf = ctypes.create_string_buffer(256)
        handle = self._lib.pcap_create(iface.encode(), errbuf)
        if not handle:
            raise AuditorError(f"cannot open interface {iface}: {errbuf.value.decode(errors='replace')}", fix="pass --iface with an existing interface")
        self._h = handle
        self._lib.pcap_set_snaplen(handle, snaplen)
        self._lib.pcap_set_promisc(handle, 0)
        self._lib.pcap_set_timeout(handle, timeout_ms)
        self._lib.pcap_set_buffer_size(handle, buffer_mb << 20)
        self._lib.pcap_set_immediate_mode(handle, 0)
        rc = self._lib.pcap_activate(handle)
        if rc < 0:
            detail = (self._lib.pcap_geterr(handle) or self._lib.pcap_statustostr(rc) or b"").decode(errors="replace")
            self._lib.pcap_close(handle)
            self._h = None
            fix = "run as root or grant CAP_NET_RAW and CAP_NET_ADMIN" if rc in (-8, -3) else "check --iface"
            raise AuditorError(f"cannot capture on {iface}: {detail}", fix=fix)
        if iface == "any":
            self._lib.pcap_set_datalink(handle, LINK_SLL2)  # carries the interface index; falls back to SLL
        self.linktype = int(self._lib.pcap_datalink(handle))
        if bpf == DEFAULT_BPF and self.linktype != LINK_ETHERNET:
            bpf = self.bpf = "ip or ip6"  # cooked captures carry no VLAN tags: the kernel has removed them
        if bpf:
            try:
                prog = _compile(self._lib, handle, bpf)
            except AuditorError:
                self.close()
                raise
            rc = self._lib.pcap_setfilter(handle, ctypes.byref(prog))
            self._lib.pcap_freecode(ctypes.byref(prog))
            if rc < 0:
                detail = (self._lib.pcap_geterr(handle) or b"").decode(errors="replace")
                self.close()
                raise AuditorError(f"cannot set BPF filter: {detail}")
        self._hdr = ctypes.POINTER(_Header)()
        self._data = ctypes.c_void_p()
        # A read timeout alone may never fire when no packet arrives, so the handle is
        # non-blocking and we wait on its descriptor ourselves.
        self._lib.pcap_setnonblock(handle, 1, errbuf)
        self._poll = select.poll()
        self._poll.register(self._lib.pcap_get_selectable_fd(handle), select.POLLIN)
        self._timeout_ms = timeout_ms

    def next(self) -> Frame | None:
        """The next frame, or None when the read timeout passed with nothing."""
        rc = self._lib.pcap_next_ex(self._h, ctypes.byref(self._hdr), ctypes.byref(self._data))
        if rc == 0:
            self._poll.poll(self._timeout_ms)
            rc = self._lib.pcap_next_ex(self._h, ctypes.byref(self._hdr), ctypes.byref(self._data))
        if rc == 1:
            h = self._hdr.contents
            return (h.sec * 1_000_000 + h.usec, self.linktype, ctypes.string_at(self._data.value, h.caplen), h.len)
        if rc == 0:
            return None
        detail = (self._lib.pcap_geterr(self._h) or b"").decode(errors="replace")
        raise AuditorError(f"capture on {self.iface} failed: {detail}")

    def stats(self) -> CaptureStats:
        st = _Stat()
        if self._h is None or self._lib.pcap_stats(self._h, ctypes.byref(st)) < 0:
            return CaptureStats()
        return CaptureStats(received=st.recv, dropped=st.drop, if_dropped=st.ifdrop)

    def close(self) -> None:
        if self._h is not None:
            self._lib.pcap_close(self._h)
            self._h = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
