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
ls -l corpus/*
