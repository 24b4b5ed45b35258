#!/usr/bin/env python3
"""Writes the seeds of the frame_relay fuzz target into seeds/frame_relay/.

Each seed is [len(client): u16 big-endian][client bytes][driver bytes]: the
client's bytes follow a valid preface, the driver's its opening SETTINGS
(see fuzz_targets/common/frame_relay.rs). Run from fuzz/: python3 seeds/frame_relay.py
"""
import os
import struct


def frame(kind, flags, sid, payload=b""):
    n = len(payload)
    return bytes([n >> 16 & 255, n >> 8 & 255, n & 255, kind, flags]) + struct.pack(">I", sid) + payload


def hint(bits, flags, v):
    mx = (1 << bits) - 1
    if v < mx:
        return bytes([flags | v])
    out = [flags | mx]
    v -= mx
    while v >= 128:
        out.append(v % 128 + 128)
        v //= 128
    out.append(v)
    return bytes(out)


def lit(name, value):
    return b"\x00" + hint(7, 0, len(name)) + name + hint(7, 0, len(value)) + value


PATH = b"/openshell.compute.v1.ComputeDriver/GetCapabilities"


def req(sid, end=False):
    block = (
        b"\x83\x86"
        + hint(4, 0, 4) + hint(7, 0, len(PATH)) + PATH
        + hint(4, 0, 1) + hint(7, 0, 10) + b"[::]:50051"
        + lit(b"content-type", b"application/grpc") + lit(b"te", b"trailers")
    )
    return frame(1, 4 | (1 if end else 0), sid, block)


def grpc(m):
    return b"\x00" + struct.pack(">I", len(m)) + m


def resp(sid):
    return frame(1, 4, sid, b"\x88" + lit(b"content-type", b"application/grpc"))


def trailers(sid):
    return frame(1, 5, sid, lit(b"grpc-status", b"0"))


def data(sid, p, end=False):
    return frame(0, 1 if end else 0, sid, p)


def padded(sid, p, pad, end=False):
    return frame(0, 8 | (1 if end else 0), sid, bytes([pad]) + p + b"\0" * pad)


SET = frame(4, 0, 0)
ACK = frame(4, 1, 0)


def wu(sid, n):
    return frame(8, 0, sid, struct.pack(">I", n))


def rst(sid, code=8):
    return frame(3, 0, sid, struct.pack(">I", code))


def ping(p, ack=False):
    return frame(6, 1 if ack else 0, 0, p)


def goaway(last, code):
    return frame(7, 0, 0, struct.pack(">II", last, code))


def setting(ident, value):
    return struct.pack(">HI", ident, value)


SEEDS = {
    "unary-call": (SET + req(1) + data(1, grpc(b"hi"), True) + ACK, ACK + resp(1) + data(1, grpc(b"caps")) + trailers(1)),
    "rapid-reset": (SET + b"".join(req(2 * i + 1) + rst(2 * i + 1) for i in range(150)), b""),
    "client-window-overflow": (SET + req(1) + wu(0, 0x7FFFFFFF), b""),
    "driver-window-overflow": (SET + req(1) + data(1, grpc(b"x"), True), wu(0, 0x7FFFFFFF) + resp(1)),
    "padded-both-ways": (
        SET + req(1) + padded(1, grpc(b"pad"), 40) + padded(1, b"", 200, True),
        resp(1) + padded(1, grpc(b"answer"), 100) + trailers(1),
    ),
    "continuation-flood": (SET + frame(1, 0, 1, b"\x83\x86") + b"".join(frame(9, 0, 1, lit(b"x", b"y")) for _ in range(20)), b""),
    "driver-goaway-then-garbage": (SET + req(1) + data(1, grpc(b"x"), True) + req(3, True), goaway(1, 0) + resp(1) + b"\xff" * 40),
    "pings-both-ways": (
        SET + ping(b"client!!") + req(1) + data(1, b"", True) + ping(b"12345678", True),
        ping(b"driver!!") + resp(1) + trailers(1) + ping(b"nobody!!", True),
    ),
    "stream-ids-and-resets-from-the-driver": (
        SET + req(1) + req(3) + data(3, b"", True),
        rst(1, 7) + resp(3) + rst(3, 0) + frame(1, 4, 2, b"\x88") + data(5, b"zz") + wu(9, 5),
    ),
    "settings-churn": (
        SET + frame(4, 0, 0, setting(4, 1 << 20) + setting(1, 0) + setting(5, 1 << 20)) + ACK + ACK + req(1, True),
        frame(4, 0, 0, setting(3, 1)) + ACK + ACK + frame(4, 0, 0, setting(1, 8)) + resp(1) + trailers(1),
    ),
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frame_relay")
    os.makedirs(out, exist_ok=True)
    for name, (client, driver) in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(struct.pack(">H", len(client)) + client + driver)
