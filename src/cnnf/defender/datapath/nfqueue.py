"""One NFQUEUE queue, driven through ctypes over libnetfilter_queue.

Why ctypes and not the NetfilterQueue package: we set the queue's flags
explicitly (the kernel's fail-open flag, ``NFQA_CFG_F_FAIL_OPEN``, which would
accept packets unevaluated when the queue is full, is cleared: a busy Defender
is not an absent one), which that package has no API for; ctypes reaches every
libnetfilter_queue call (flags, queue length, socket buffer, verdict with mark)
without a compiled extension, and Debian's ``libnetfilter-queue1`` is all it
needs at run time.

:class:`QueueLoop` is sans-policy: a ``handler(payload, mark)`` returns the
kernel verdict and, optionally, a new packet mark. The verdict workers build
on it (:mod:`cnnf.defender.datapath.workers`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from collections.abc import Callable

from cnnf.defender.datapath.netns import DatapathError

NF_DROP = 0
NF_ACCEPT = 1
NF_REPEAT = 4
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1
MSG_DONTWAIT = 0x40

Handler = Callable[[bytes, int], tuple[int, int | None]]
# Deferred mode: ``defer(packet_id, payload, mark)`` keeps the packet; the caller
# issues its verdict later with :meth:`QueueLoop.verdict`.
Defer = Callable[[int, bytes, int], None]


class QueueBusyError(DatapathError):
    """The queue number is already bound by another process (or this one)."""


class _PacketHdr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("packet_id", ctypes.c_uint32),
        ("hw_protocol", ctypes.c_uint16),
        ("hook", ctypes.c_uint8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)
_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _lib, _libc
    if _lib is None or _libc is None:
        name = ctypes.util.find_library("netfilter_queue") or "libnetfilter_queue.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise DatapathError(
                f"cannot load libnetfilter_queue ({exc}); install libnetfilter-queue1"
            ) from exc
        vp, u16, u32, cint = ctypes.c_void_p, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int
        lib.nfq_open.restype = vp
        lib.nfq_close.argtypes = [vp]
        lib.nfq_create_queue.restype = vp
        lib.nfq_create_queue.argtypes = [vp, u16, _CALLBACK, vp]
        lib.nfq_destroy_queue.argtypes = [vp]
        lib.nfq_set_mode.argtypes = [vp, ctypes.c_uint8, u32]
        lib.nfq_set_queue_flags.argtypes = [vp, u32, u32]
        lib.nfq_set_queue_maxlen.argtypes = [vp, u32]
        lib.nfq_fd.argtypes = [vp]
        lib.nfq_nfnlh.restype = vp
        lib.nfq_nfnlh.argtypes = [vp]
        lib.nfnl_rcvbufsiz.restype = ctypes.c_uint
        lib.nfnl_rcvbufsiz.argtypes = [vp, ctypes.c_uint]
        lib.nfq_handle_packet.argtypes = [vp, ctypes.c_char_p, cint]
        lib.nfq_get_msg_packet_hdr.restype = ctypes.POINTER(_PacketHdr)
        lib.nfq_get_msg_packet_hdr.argtypes = [vp]
        lib.nfq_get_payload.argtypes = [vp, ctypes.POINTER(ctypes.c_void_p)]
        lib.nfq_get_nfmark.restype = u32
        lib.nfq_get_nfmark.argtypes = [vp]
        lib.nfq_set_verdict.argtypes = [vp, u32, u32, u32, vp]
        lib.nfq_set_verdict2.argtypes = [vp, u32, u32, u32, u32, vp]
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.recv.restype = ctypes.c_ssize_t
        libc.recv.argtypes = [cint, ctypes.c_void_p, ctypes.c_size_t, cint]
        _lib, _libc = lib, libc
    return _lib, _libc


class QueueLoop:
    """Binds one queue number and issues a verdict for every packet it reads.

    A full queue drops (the fail-open flag is always cleared). A handler that
    raises gets ``error_verdict`` and is counted in ``errors``. With ``defer``
    instead of a handler, reading only hands each packet over; the caller owes
    the kernel a :meth:`verdict` for it (a packet without one stays in the
    kernel's queue, counting against its length, until the queue is unbound).
    """

    def __init__(
        self,
        queue_num: int,
        handler: Handler | None,
        *,
        defer: Defer | None = None,
        error_verdict: int = NF_DROP,
        copy_range: int = 128,
        maxlen: int = 4096,
        rcvbuf: int = 8 << 20,
    ) -> None:
        self.queue_num = queue_num
        if (handler is None) == (defer is None):
            raise ValueError("QueueLoop takes a handler or defer, not both or neither")
        self.handler = handler
        self.defer = defer
        self.error_verdict = error_verdict
        self.errors = 0
        self.overruns = 0  # ENOBUFS: the kernel dropped messages to us
        self._lib, self._libc = _libs()
        self._buf = ctypes.create_string_buffer(0x20000)
        self._cb = _CALLBACK(self._on_packet)  # keep a reference: C holds the pointer
        h = self._lib.nfq_open()
        if not h:
            raise DatapathError(f"nfq_open: {os.strerror(ctypes.get_errno())}")
        self._h: int | None = h
        qh = self._lib.nfq_create_queue(h, queue_num, self._cb, None)
        if not qh:
            err = ctypes.get_errno()
            self._lib.nfq_close(h)
            self._h = None
            if err in (errno.EPERM, errno.EBUSY, 0):
                raise QueueBusyError(
                    f"NFQUEUE {queue_num} is already bound by another process "
                    f"({os.strerror(err) if err else 'refused'}); stop it or pick another "
                    "queue number"
                )
            raise DatapathError(f"binding NFQUEUE {queue_num}: {os.strerror(err)}")
        self._qh: int | None = qh
        if self._lib.nfq_set_mode(qh, NFQNL_COPY_PACKET, copy_range) < 0:
            raise DatapathError(f"NFQUEUE {queue_num}: cannot set copy mode")
        if self._lib.nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, 0) < 0:
            raise DatapathError(f"NFQUEUE {queue_num}: the kernel refused the queue flags")
        self._lib.nfq_set_queue_maxlen(qh, maxlen)
        self._lib.nfnl_rcvbufsiz(self._lib.nfq_nfnlh(h), rcvbuf)
        self._fd = self._lib.nfq_fd(h)

    def fileno(self) -> int:
        return int(self._fd)

    def _on_packet(self, qh: int, _nfmsg: int, nfad: int, _data: int) -> int:
        lib = self._lib
        packet_id = socket.ntohl(lib.nfq_get_msg_packet_hdr(nfad).contents.packet_id)
        ptr = ctypes.c_void_p()
        n = lib.nfq_get_payload(nfad, ctypes.byref(ptr))
        try:
            payload = ctypes.string_at(ptr.value, n) if n > 0 and ptr.value else b""
            if self.defer is not None:
                self.defer(packet_id, payload, lib.nfq_get_nfmark(nfad))
                return 0
            assert self.handler is not None
            verdict, mark = self.handler(payload, lib.nfq_get_nfmark(nfad))
        except Exception:
            self.errors += 1
            verdict, mark = self.error_verdict, None
        if mark is None:
            lib.nfq_set_verdict(qh, packet_id, verdict, 0, None)
        else:
            lib.nfq_set_verdict2(qh, packet_id, verdict, mark, 0, None)
        return 0

    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None:
        """The verdict for a packet handed to ``defer``."""
        if self._qh is None:
            return  # unbound: the kernel already let go of the packet
        if mark is None:
            self._lib.nfq_set_verdict(self._qh, packet_id, verdict, 0, None)
        else:
            self._lib.nfq_set_verdict2(self._qh, packet_id, verdict, mark, 0, None)

    def process(self, max_packets: int = 64) -> int:
        """Read and decide up to ``max_packets`` waiting packets without blocking;
        returns how many messages were read."""
        if self._h is None:
            raise DatapathError("the queue is closed")
        done = 0
        while done < max_packets:
            n = self._libc.recv(self._fd, self._buf, len(self._buf), MSG_DONTWAIT)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                if err in (errno.EAGAIN, errno.EINTR):
                    break
                raise DatapathError(f"NFQUEUE {self.queue_num}: recv: {os.strerror(err)}")
            self._lib.nfq_handle_packet(self._h, self._buf, n)
            done += 1
        return done

    def close(self) -> None:
        """Unbind the queue (the kernel also unbinds it when the process dies)."""
        if self._qh is not None:
            self._lib.nfq_destroy_queue(self._qh)
            self._qh = None
        if self._h is not None:
            self._lib.nfq_close(self._h)
            self._h = None
