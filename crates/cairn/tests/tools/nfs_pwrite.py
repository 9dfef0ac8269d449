#!/usr/bin/env python3
"""Writes a local file into a file on an NFS server at an offset, through
libnfs (the library behind nfs-cp), without truncating or creating it:
what a hypervisor does to a disk file on an NFS datastore.

Usage: nfs_pwrite.py NFS-URL OFFSET LOCAL-FILE
"""
import ctypes, os, sys
url, offset, src = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
class NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]
lib = ctypes.CDLL("libnfs.so.13")
lib.nfs_init_context.restype = ctypes.c_void_p
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [ctypes.c_void_p]
lib.nfs_parse_url_full.restype = ctypes.POINTER(NfsUrl)
lib.nfs_parse_url_full.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
nfs = ctypes.c_void_p(lib.nfs_init_context())
def check(rc, what):
    if rc < 0:
        sys.exit(f"{what}: {lib.nfs_get_error(nfs).decode()}")
u = lib.nfs_parse_url_full(nfs, url)
if not u:
    check(-1, "url")
check(lib.nfs_mount(nfs, u.contents.server, u.contents.path), "mount")
fh = ctypes.c_void_p()
check(lib.nfs_open(nfs, u.contents.file, os.O_WRONLY, ctypes.byref(fh)), "open")
data = open(src, "rb").read()
check(lib.nfs_pwrite(nfs, fh, ctypes.c_uint64(offset), ctypes.c_uint64(len(data)), data), "pwrite")

lib.nfs_close(nfs, fh)
print("wrote", len(data))
