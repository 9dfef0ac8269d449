#!/usr/bin/env python3
"""Crafts ext2/ext4 and FAT32 images the way an attacker inside a guest
could, for the tests of what Cairn reads from snapshots (the cases a
red-team pass found).

Usage:
  extfat_craft.py IMG indirect-loop INO      ext2: the file's indirect,
      double and triple indirect pointers all name one block that holds
      only its own number (a loop of block maps), and it claims 4 TiB
  extfat_craft.py IMG extent-bomb INO SRC    ext4: file INO maps file SRC's
      first 16 MiB (one extent of 4096 blocks) 65,536 times: a terabyte
      of real data from a small image
  extfat_craft.py IMG share-dir INO FROM     ext4: directory INO takes
      directory FROM's blocks (its extent tree and size)
  extfat_craft.py IMG root-file               ext: the root inode's mode
      says it is a regular file
  extfat_craft.py IMG fat-dag N              FAT32 with /D00…/D{N-1}, each
      holding P and Q: every D_i's P and Q start at D_{i+1}'s cluster
      (2^N paths, no loop)
  extfat_craft.py IMG fat-short PATH CLUSTERS FAT32: the file's chain ends
      after CLUSTERS clusters, its size unchanged
Inode numbers come from `debugfs -R 'ls -l /'`.
"""
import struct
import sys

EXT_MAGIC = 0xF30A


class Image:
    def __init__(self, path):
        self.f = open(path, "r+b")

    def read(self, at, n):
        self.f.seek(at)
        return self.f.read(n)

    def write(self, at, data):
        self.f.seek(at)
        self.f.write(data)
        self.f.flush()


class Ext(Image):
    def __init__(self, path):
        super().__init__(path)
        sb = self.read(1024, 1024)
        self.bs = 1024 << struct.unpack_from("<I", sb, 0x18)[0]
        self.first = struct.unpack_from("<I", sb, 0x14)[0]
        self.per_group = struct.unpack_from("<I", sb, 0x28)[0]
        self.inode_size = struct.unpack_from("<H", sb, 0x58)[0]
        incompat = struct.unpack_from("<I", sb, 0x60)[0]
        self.blocks = struct.unpack_from("<I", sb, 4)[0]
        self.desc = struct.unpack_from("<H", sb, 0xFE)[0] if incompat & 0x80 else 32

    def inode_at(self, ino):
        group, index = divmod(ino - 1, self.per_group)
        d = self.read((self.first + 1) * self.bs + group * self.desc, self.desc)
        table = struct.unpack_from("<I", d, 8)[0]
        if self.desc >= 64:
            table |= struct.unpack_from("<I", d, 0x28)[0] << 32
        return table * self.bs + index * self.inode_size

    def inode(self, ino):
        return bytearray(self.read(self.inode_at(ino), self.inode_size))

    def put_inode(self, ino, data):
        self.write(self.inode_at(ino), bytes(data))

    def block(self, n, data):
        self.write(n * self.bs, data.ljust(self.bs, b"\0"))


def set_size(inode, size):
    struct.pack_into("<I", inode, 4, size & 0xFFFFFFFF)
    struct.pack_into("<I", inode, 0x6C, size >> 32)


def header(entries, depth, most):
    return struct.pack("<HHHHI", EXT_MAGIC, entries, most, depth, 0)


def indirect_loop(img, ino):
    e = Ext(img)
    x = e.blocks - 1
    e.block(x, struct.pack("<I", x) * (e.bs // 4))
    i = e.inode(ino)
    for slot in (12, 13, 14):
        struct.pack_into("<I", i, 0x28 + slot * 4, x)
    set_size(i, 1 << 42)
    e.put_inode(ino, i)


def extent_bomb(img, ino, src):
    e = Ext(img)
    leaf = e.inode(src)[0x28 + 12:0x28 + 24]
    length = struct.unpack_from("<H", leaf, 4)[0]
    physical = struct.unpack_from("<I", leaf, 8)[0]
    assert length == 4096, f"the source's first extent has {length} blocks"
    per_leaf = (e.bs - 12) // 12
    total = 65536
    leaves = [e.blocks - 2 - i for i in range(-(-total // per_leaf))]
    k = 0
    for n in leaves:
        rows = []
        while len(rows) < per_leaf and k < total:
            rows.append(struct.pack("<IHHI", k * 4096, 4096, 0, physical))
            k += 1
        e.block(n, header(len(rows), 0, per_leaf) + b"".join(rows))
    top = e.blocks - 1
    e.block(top, header(len(leaves), 1, per_leaf) + b"".join(
        struct.pack("<IIHH", i * per_leaf * 4096, n, 0, 0) for i, n in enumerate(leaves)))
    i = e.inode(ino)
    struct.pack_into("<I", i, 0x20, struct.unpack_from("<I", i, 0x20)[0] | 0x80000)
    i[0x28:0x28 + 24] = header(1, 2, 4) + struct.pack("<IIHH", 0, top, 0, 0)
    set_size(i, 1 << 40)
    e.put_inode(ino, i)


def root_file(img):
    e = Ext(img)
    i = e.inode(2)
    struct.pack_into("<H", i, 0, 0o100644)
    e.put_inode(2, i)


def share_dir(img, ino, source):
    e = Ext(img)
    src = e.inode(source)
    i = e.inode(ino)
    i[0x28:0x28 + 60] = src[0x28:0x28 + 60]
    i[4:8] = src[4:8]
    i[0x6C:0x70] = src[0x6C:0x70]
    e.put_inode(ino, i)


class Fat32(Image):
    def __init__(self, path):
        super().__init__(path)
        b = self.read(0, 512)
        self.bps, self.spc, self.reserved, self.fats = struct.unpack_from("<HBHB", b, 11)
        self.fat_size = struct.unpack_from("<I", b, 36)[0]
        self.root = struct.unpack_from("<I", b, 44)[0]
        self.cluster = self.bps * self.spc
        self.data = (self.reserved + self.fats * self.fat_size) * self.bps

    def next(self, c):
        return struct.unpack("<I", self.read(self.reserved * self.bps + 4 * c, 4))[0] & 0x0FFFFFFF

    def set_next(self, c, v):
        for k in range(self.fats):
            self.write((self.reserved + k * self.fat_size) * self.bps + 4 * c, struct.pack("<I", v))

    def chain(self, c):
        out = []
        while 2 <= c < 0x0FFFFFF8 and len(out) < 1 << 20:
            out.append(c)
            c = self.next(c)
        return out

    def find(self, dir_cluster, short):
        for cl in self.chain(dir_cluster):
            base = self.data + (cl - 2) * self.cluster
            for k in range(self.cluster // 32):
                at = base + 32 * k
                e = self.read(at, 32)
                if e[0] == 0:
                    return None
                if e[11] != 0x0F and e[0:11] == short:
                    return at, e
        return None

    def start(self, entry):
        return struct.unpack_from("<H", entry, 20)[0] << 16 | struct.unpack_from("<H", entry, 26)[0]

    def point(self, at, c):
        self.write(at + 20, struct.pack("<H", c >> 16))
        self.write(at + 26, struct.pack("<H", c & 0xFFFF))


def short_name(name):
    base, _, ext = name.upper().partition(".")
    return (base.ljust(8) + ext.ljust(3)).encode()


def fat_dag(img, n):
    f = Fat32(img)
    start = {i: f.start(f.find(f.root, short_name(f"D{i:02}"))[1]) for i in range(n)}
    for i in range(n - 1):
        for sub in ("P", "Q"):
            at, _ = f.find(start[i], short_name(sub))
            f.point(at, start[i + 1])


def fat_short(img, path, clusters):
    f = Fat32(img)
    where = f.root
    parts = path.strip("/").split("/")
    for p in parts[:-1]:
        where = f.start(f.find(where, short_name(p))[1])
    _, e = f.find(where, short_name(parts[-1]))
    chain = f.chain(f.start(e))
    assert len(chain) > clusters, f"{path} has {len(chain)} clusters"
    f.set_next(chain[clusters - 1], 0x0FFFFFFF)


def main():
    img, what, *args = sys.argv[1:]
    if what == "indirect-loop":
        indirect_loop(img, int(args[0]))
    elif what == "extent-bomb":
        extent_bomb(img, int(args[0]), int(args[1]))
    elif what == "share-dir":
        share_dir(img, int(args[0]), int(args[1]))
    elif what == "root-file":
        root_file(img)
    elif what == "fat-dag":
        fat_dag(img, int(args[0]))
    elif what == "fat-short":
        fat_short(img, args[0], int(args[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
