#!/usr/bin/env python3
"""Crafts hostile structures into a bare NTFS volume made by mkntfs (the
MFT contiguous at its start, as on a fresh small volume), the way an
attacker with raw access to a guest's disk could. Used by the guest tests.

    ntfs_craft.py VOLUME index-cycle DIRNAME    the first node of the folder's
                                                index names itself as every
                                                entry's child (an endless descent)
    ntfs_craft.py VOLUME runs-beyond FILENAME   one run of 2^40 clusters from
                                                cluster 1: far past the volume
    ntfs_craft.py VOLUME run-beyond-first FILENAME  its first cluster moved
                                                far past the volume, the rest
                                                where it was
    ntfs_craft.py VOLUME sparse FILENAME GIB    one sparse run of GIB GiB
    ntfs_craft.py VOLUME short-runs FILENAME MIB sizes claim MIB MiB, the runs
                                                stay as they were

Names are looked up among the volume's first few hundred records.
"""
import struct
import sys


class Volume:
    def __init__(self, path):
        self.f = open(path, "r+b")
        boot = self.read(0, 512)
        bytes_per_sector = struct.unpack_from("<H", boot, 11)[0]
        self.cluster = bytes_per_sector * boot[13]
        self.mft = struct.unpack_from("<Q", boot, 0x30)[0] * self.cluster
        c = struct.unpack_from("<b", boot, 0x40)[0]
        self.record_size = c * self.cluster if c > 0 else 1 << -c
        c = struct.unpack_from("<b", boot, 0x44)[0]
        self.index_size = c * self.cluster if c > 0 else 1 << -c

    def read(self, off, n):
        self.f.seek(off)
        return bytearray(self.f.read(n))

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(bytes(data))
        self.f.flush()

    @staticmethod
    def unfix(b):
        """The block with its update sequence's saved bytes put back."""
        uo, uc = struct.unpack_from("<HH", b, 4)
        for i in range(1, uc):
            p = i * 512 - 2
            assert b[p:p + 2] == b[uo:uo + 2], "bad fixup"
            b[p:p + 2] = b[uo + 2 * i:uo + 2 * i + 2]
        return b

    @staticmethod
    def fix(b):
        uo, uc = struct.unpack_from("<HH", b, 4)
        for i in range(1, uc):
            p = i * 512 - 2
            b[uo + 2 * i:uo + 2 * i + 2] = b[p:p + 2]
            b[p:p + 2] = b[uo:uo + 2]
        return b

    def record(self, n):
        return self.unfix(self.read(self.mft + n * self.record_size, self.record_size))

    def put_record(self, n, b):
        self.write(self.mft + n * self.record_size, self.fix(bytearray(b)))

    @staticmethod
    def attribute(b, kind):
        off = struct.unpack_from("<H", b, 0x14)[0]
        while off + 8 <= len(b):
            t, length = struct.unpack_from("<II", b, off)
            if t == 0xFFFFFFFF or length == 0:
                return None
            if t == kind:
                a = {"off": off, "len": length, "nonres": b[off + 8]}
                if a["nonres"]:
                    a["runoff"] = struct.unpack_from("<H", b, off + 0x20)[0]
                else:
                    a["voff"] = struct.unpack_from("<H", b, off + 0x14)[0]
                return a
            off += length
        return None

    def by_name(self, want):
        for n in range(16, 512):
            r = self.record(n) if self.read(self.mft + n * self.record_size, 4) == b"FILE" else None
            fn = r and self.attribute(r, 0x30)
            if not fn:
                continue
            o = fn["off"] + fn["voff"]
            if r[o + 0x42:o + 0x42 + 2 * r[o + 0x40]].decode("utf-16le") == want:
                return n
        sys.exit(f"{want}: no such record")

    @staticmethod
    def runs(b, a):
        p = a["off"] + a["runoff"]
        lcn, out = 0, []
        while b[p]:
            h = b[p]
            p += 1
            length = int.from_bytes(b[p:p + (h & 15)], "little")
            p += h & 15
            lcn += int.from_bytes(b[p:p + (h >> 4)], "little", signed=True)
            p += h >> 4
            out.append((lcn, length))
        return out

    def set_runs(self, n, runs, clusters):
        """Gives record n's $DATA the mapping pairs `runs` (no terminator)
        and sizes of `clusters` clusters."""
        r = self.record(n)
        a = self.attribute(r, 0x80)
        assert a and a["nonres"], "the file's data must be non-resident"
        new = runs + b"\0"
        new_len = (a["runoff"] + len(new) + 7) & ~7
        used = struct.unpack_from("<I", r, 0x18)[0]
        delta = new_len - a["len"]
        tail = bytes(r[a["off"] + a["len"]:used])
        body = bytes(r[a["off"]:a["off"] + a["runoff"]]) + new
        body += b"\0" * (new_len - len(body))
        r[a["off"]:a["off"] + len(body + tail)] = body + tail
        struct.pack_into("<I", r, a["off"] + 4, new_len)
        struct.pack_into("<I", r, 0x18, used + delta)
        struct.pack_into("<Q", r, a["off"] + 0x18, clusters - 1)
        size = clusters * self.cluster
        struct.pack_into("<QQQ", r, a["off"] + 0x28, size, size, size)
        self.put_record(n, r)


def index_cycle(v, name):
    n = v.by_name(name)
    r = v.record(n)
    alloc = v.attribute(r, 0xA0)
    assert alloc, f"{name} has no index allocation: give it more entries"
    lcn, _ = v.runs(r, alloc)[0]
    off = lcn * v.cluster
    blk = v.unfix(v.read(off, v.index_size))
    assert blk[:4] == b"INDX"
    first, end, room, _ = struct.unpack_from("<IIII", blk, 0x18)
    p, body = 0x18 + first, bytearray()
    while p < 0x18 + end:
        length, _, flags = struct.unpack_from("<HHI", blk, p + 8)
        e = bytearray(blk[p:p + length]) + (b"" if flags & 1 else b"\0" * 8)
        struct.pack_into("<H", e, 8, len(e))
        struct.pack_into("<I", e, 12, flags | 1)
        struct.pack_into("<Q", e, len(e) - 8, 0)  # child: this very node
        body += e
        if flags & 2:
            break
        p += length
    assert first + len(body) <= room, "no room in the index node"
    blk[0x18 + first:0x18 + first + len(body)] = body
    struct.pack_into("<III", blk, 0x18 + 4, first + len(body), room, 1)
    v.write(off, v.fix(blk))


def main():
    path, op, name = sys.argv[1:4]
    v = Volume(path)
    if op == "index-cycle":
        index_cycle(v, name)
    elif op == "runs-beyond":
        clusters = 1 << 40
        v.set_runs(v.by_name(name), bytes([0x16]) + clusters.to_bytes(6, "little") + b"\x01", clusters)
    elif op == "run-beyond-first":
        n = v.by_name(name)
        r = v.record(n)
        (lcn, length), = v.runs(r, v.attribute(r, 0x80))
        far = 1 << 32
        runs = bytes([0x51, 1]) + far.to_bytes(5, "little", signed=True)
        runs += bytes([0x54]) + (length - 1).to_bytes(4, "little")
        runs += (lcn + 1 - far).to_bytes(5, "little", signed=True)
        v.set_runs(n, runs, length)
    elif op == "sparse":
        clusters = int(sys.argv[4]) * (1 << 30) // v.cluster
        v.set_runs(v.by_name(name), bytes([0x04]) + clusters.to_bytes(4, "little"), clusters)
    elif op == "short-runs":
        n = v.by_name(name)
        r = v.record(n)
        a = v.attribute(r, 0x80)
        size = int(sys.argv[4]) << 20
        struct.pack_into("<QQQ", r, a["off"] + 0x28, size, size, size)
        v.put_record(n, r)
    else:
        sys.exit(f"unknown operation {op}")


main()
