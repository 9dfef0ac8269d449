#!/usr/bin/env bash
# Builds small real images as seed corpora for the fuzz targets:
#   fuzz/corpus/<target>/…   then: RUSTC_BOOTSTRAP=1 cargo fuzz run <target>
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
mkdir -p "$t/tree/dir/sub" corpus/{partition,ext4,ntfs,fat}
echo "hello" > "$t/tree/a.txt"; head -c 5000 /dev/urandom > "$t/tree/dir/b.bin"
echo "deep" > "$t/tree/dir/sub/c.txt"; ln -s a.txt "$t/tree/link"
truncate -s 512K "$t/e4"; mkfs.ext4 -q -F -b 1024 -N 32 -d "$t/tree" "$t/e4" 2>/dev/null; cp "$t/e4" corpus/ext4/ext4-1k
truncate -s 512K "$t/e2"; mkfs.ext2 -q -F -b 1024 -N 32 -d "$t/tree" "$t/e2"; cp "$t/e2" corpus/ext4/ext2-1k
truncate -s 1M "$t/e4x"; mkfs.ext4 -q -F -b 4096 -N 32 -O ^has_journal -d "$t/tree" "$t/e4x"; cp "$t/e4x" corpus/ext4/ext4-4k
# inline data: small files and folders kept in their inodes
truncate -s 1M "$t/e4i"; mkfs.ext4 -q -F -b 4096 -I 256 -N 32 -O inline_data,^has_journal -d "$t/tree" "$t/e4i"; cp "$t/e4i" corpus/ext4/ext4-inline
truncate -s 2M "$t/nt"; mkntfs -F -Q -q "$t/nt" 2>/dev/null; ntfscp -q "$t/nt" "$t/tree/a.txt" /a.txt; cp "$t/nt" corpus/ntfs/ntfs-2m
truncate -s 256K "$t/f12"; mkfs.vfat -F 12 "$t/f12" >/dev/null
mmd -i "$t/f12" ::/dir; mcopy -i "$t/f12" "$t/tree/a.txt" "::/dir/A long file name.txt"; cp "$t/f12" corpus/fat/fat12
truncate -s 1M "$t/g"; sgdisk -n 1:34:1000 -t 1:8300 -n 2:1001:2000 "$t/g" >/dev/null; head -c 65536 "$t/g" > corpus/partition/gpt
truncate -s 4M "$t/m"; printf 'label: dos\nsize=1MiB, type=c\ntype=5\nsize=1MiB, type=83\nsize=512KiB, type=7\n' | sfdisk -q "$t/m" >/dev/null
head -c 65536 "$t/m" > corpus/partition/mbr-logical
dd if="$t/m" of=corpus/partition/mbr-ebr bs=512 skip=$(( $(sfdisk --json "$t/m" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][1]["start"])') )) count=1 status=none
cp "$t/f12" corpus/partition/bare-fat
mkdir -p corpus/scan_parsers
fx=../crates/cairn-scan/tests/fixtures/osv
{ printf 'Package: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u1\n\nP:libcrypto3\nV:3.1.4-r0\no:openssl\n\nID=debian\nVERSION_ID="12"\n'; printf '\0'; cat "$fx/DEBIAN-CVE-2023-4911.json"; } > corpus/scan_parsers/dpkg-osv
{ printf 'ID=alpine\nVERSION_ID=3.18.4\nP:libcrypto3\nV:3.1.3-r0\no:openssl\n'; printf '\0'; cat "$fx/ALPINE-CVE-2023-5363.json"; } > corpus/scan_parsers/apk-osv
# nbd: a client's whole session (options, then read, write, block status,
# write zeroes, trim, flush, disconnect) against the "rw" export.
mkdir -p corpus/nbd
python3 - corpus/nbd/session <<'PY'
import struct, sys
def opt(o, d=b''): return struct.pack('>QII', 0x49484156454F5054, o, len(d)) + d
def req(ty, cookie, off, n, data=b''): return struct.pack('>IHHQQI', 0x25609513, 0, ty, cookie, off, n) + data
meta = struct.pack('>I', 2) + b'rw' + struct.pack('>II', 1, 15) + b'base:allocation'
s = struct.pack('>I', 3) + opt(8) + opt(10, meta) + opt(7, struct.pack('>I', 2) + b'rw' + b'\0\0')
s += req(0, 1, 0, 4096) + req(1, 2, 4096, 8, b'ABCDEFGH') + req(7, 3, 0, 1 << 20)
s += req(6, 4, 8192, 4096) + req(4, 5, 0, 4096) + req(3, 6, 0, 0) + req(2, 7, 0, 0)
open(sys.argv[1], 'wb').write(s)
PY
# rpmdb: one package's header in a small Packages table, made by rpm.
mkdir -p corpus/rpmdb "$t/rpm/SPECS" "$t/rpmdb"
printf 'Name: openssl\nEpoch: 1\nVersion: 3.0.7\nRelease: 1\nSummary: t\nLicense: ASL 2.0\nBuildArch: noarch\n%%description\nt\n%%package libs\nSummary: t\n%%description libs\nt\n%%files libs\n' > "$t/rpm/SPECS/o.spec"
rpmbuild --define "_topdir $t/rpm" -bb "$t/rpm/SPECS/o.spec" > /dev/null 2>&1
rpm --dbpath "$t/rpmdb" --initdb
rpm -i --justdb --nodeps --dbpath "$t/rpmdb" "$t"/rpm/RPMS/noarch/*.rpm 2> /dev/null
rm -f corpus/rpmdb/seed
sqlite3 corpus/rpmdb/seed "attach '$t/rpmdb/rpmdb.sqlite' as r; create table Packages(hnum integer primary key autoincrement, blob blob not null); insert into Packages select hnum, blob from r.Packages; detach r; vacuum;"
# codec: a stored object's framing after decryption (raw, whole, per block).
mkdir -p corpus/codec
python3 - corpus/codec <<'PY'
import struct, subprocess, sys
bs = 65536
text = bytes(b"abcdefghij"[(i // 7 + i // 1000) % 10] for i in range(3 * bs - 100))
z = lambda b: subprocess.run(['zstd', '-1', '-c', '--no-check'], input=b, capture_output=True, check=True).stdout
frames = [z(text[i:i + bs]) for i in range(0, len(text), bs)]
with open(sys.argv[1] + '/blocks', 'wb') as f:
    f.write(bytes([2]) + struct.pack('<H', len(frames)) + b''.join(struct.pack('<I', len(x)) for x in frames) + b''.join(frames))
open(sys.argv[1] + '/whole', 'wb').write(bytes([1]) + z(text))
open(sys.argv[1] + '/raw', 'wb').write(bytes([0]) + text[:5000])
PY
ls -l corpus/*
