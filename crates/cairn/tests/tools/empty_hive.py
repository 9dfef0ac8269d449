#!/usr/bin/env python3
"""Writes an empty Windows registry hive (regf): a root key with a
security descriptor and nothing else, for hivexsh to fill in tests
(hivex edits hives but does not create them)."""
import struct, sys

def cell(payload):
    size = (len(payload) + 4 + 7) // 8 * 8
    return struct.pack('<i', -size) + payload + b'\0' * (size - 4 - len(payload))

# A self-relative security descriptor with no owner, group or ACLs.
sd = struct.pack('<BBHIIII', 1, 0, 0x8004, 0, 0, 0, 0)
HBIN_HEADER = 32
root_off = HBIN_HEADER
nk_len = 0x4C + len(b'ROOT')
sk_off = root_off + (nk_len + 4 + 7) // 8 * 8
nk = bytearray(0x4C)
nk[0:2] = b'nk'
struct.pack_into('<H', nk, 2, 0x2C)            # hive entry, no delete, ASCII name
struct.pack_into('<I', nk, 0x10, 0xFFFFFFFF)   # parent
struct.pack_into('<I', nk, 0x1C, 0xFFFFFFFF)   # subkey list
struct.pack_into('<I', nk, 0x20, 0xFFFFFFFF)   # volatile subkey list
struct.pack_into('<I', nk, 0x28, 0xFFFFFFFF)   # value list
struct.pack_into('<I', nk, 0x2C, sk_off)       # security
struct.pack_into('<I', nk, 0x30, 0xFFFFFFFF)   # class name
struct.pack_into('<H', nk, 0x48, 4)
nk += b'ROOT'
sk = b'sk' + struct.pack('<HIIII', 0, sk_off, sk_off, 1, len(sd)) + sd
cells = cell(bytes(nk)) + cell(sk)
free = 4096 - HBIN_HEADER - len(cells)
hbin = b'hbin' + struct.pack('<II', 0, 4096) + b'\0' * 20 + cells + struct.pack('<i', free) + b'\0' * (free - 4)
base = bytearray(4096)
base[0:4] = b'regf'
struct.pack_into('<IIQIIIIIII', base, 4, 1, 1, 0, 1, 5, 0, 1, root_off, 4096, 1)
struct.pack_into('<I', base, 0x1FC, 0)
x = 0
for i in range(0, 0x1FC, 4):
    x ^= struct.unpack_from('<I', base, i)[0]
struct.pack_into('<I', base, 0x1FC, x)
open(sys.argv[1], 'wb').write(bytes(base) + hbin)
