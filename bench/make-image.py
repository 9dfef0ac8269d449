#!/usr/bin/env python3
"""Builds the benchmark guest: a ~2 GiB GPT disk with one ext4 partition
holding a Debian minbase root and a user's data (documents, source code,
incompressible media, an SQLite database), then a "day 2" copy where about
1.5% of the data was changed in place, the way a guest overwrites blocks.

Usage: make-image.py WORKDIR   (writes WORKDIR/day1.img and WORKDIR/day2.img)
"""
import os, random, shutil, sqlite3, subprocess, sys

work = sys.argv[1]
root = os.path.join(work, "root")
day1 = os.path.join(work, "day1.img")
day2 = os.path.join(work, "day2.img")
rnd = random.Random(2026)
OFFSET = 1 << 20


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def words(n):
    vocab = ("the customer invoice quarterly report server backup ledger meeting notes "
             "revenue project deadline contract shipment payment order support ticket").split()
    return " ".join(rnd.choice(vocab) for _ in range(n))


if not os.path.exists(os.path.join(root, "etc", "debian_version")):
    shutil.rmtree(root, ignore_errors=True)
    print("debootstrap --variant=minbase bookworm (a few minutes)", flush=True)
    run("debootstrap", "--variant=minbase", "bookworm", root, "http://deb.debian.org/debian",
        stdout=subprocess.DEVNULL)

home = os.path.join(root, "home", "user")
if not os.path.exists(os.path.join(home, ".done")):
    docs = os.path.join(home, "Documents")
    os.makedirs(docs, exist_ok=True)
    for i in range(2500):  # ~120 MB of text documents
        with open(os.path.join(docs, f"doc-{i:05}.txt"), "w") as f:
            for _ in range(rnd.randint(20, 80)):
                f.write(words(rnd.randint(40, 120)) + "\n")
    code = os.path.join(home, "src")
    registry = os.path.expanduser("~/.cargo/registry/src")
    copied = 0
    for index in sorted(os.listdir(registry)):
        for crate in sorted(os.listdir(os.path.join(registry, index))):
            if copied > 150 << 20:
                break
            src = os.path.join(registry, index, crate)
            shutil.copytree(src, os.path.join(code, crate), symlinks=True, dirs_exist_ok=True)
            copied += sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs
                          if os.path.isfile(os.path.join(d, f)))
    media = os.path.join(home, "Pictures")
    os.makedirs(media, exist_ok=True)
    for i in range(40):  # ~240 MB incompressible
        with open(os.path.join(media, f"IMG_{i:04}.jpg"), "wb") as f:
            f.write(os.urandom(rnd.randint(4, 8) << 20))
    dbdir = os.path.join(home, "app")
    os.makedirs(dbdir, exist_ok=True)
    db = sqlite3.connect(os.path.join(dbdir, "orders.db"))
    db.execute("create table orders(id integer primary key, customer text, total real, note text)")
    db.executemany("insert into orders(customer, total, note) values (?, ?, ?)",
                   ((f"customer {i}", i * 0.37, words(20)) for i in range(400_000)))
    db.commit()
    db.close()
    open(os.path.join(home, ".done"), "w").close()

if not os.path.exists(day1):
    print("building the 2 GiB GPT+ext4 image", flush=True)
    run("truncate", "-s", "2G", day1 + ".tmp")
    run("sgdisk", "-n", "1:2048:0", "-t", "1:8300", day1 + ".tmp", stdout=subprocess.DEVNULL)
    run("mkfs.ext4", "-q", "-F", "-d", root, "-E", "offset=1048576", day1 + ".tmp", "2046M")
    os.rename(day1 + ".tmp", day1)

if not os.path.exists(day2):
    print("day 2: changing ~1.5% of the data in place", flush=True)
    run("cp", "--sparse=always", day1, day2 + ".tmp")
    allocated = os.stat(day1).st_blocks * 512
    budget = int(allocated * 0.015)
    targets = ["/home/user/app/orders.db"] + [f"/home/user/Documents/doc-{i:05}.txt" for i in range(0, 2500, 7)] \
        + [f"/home/user/Pictures/IMG_{i:04}.jpg" for i in range(0, 40, 9)]
    bs = 4096
    with open(day2 + ".tmp", "r+b") as img:
        for t in targets:
            out = subprocess.run(["debugfs", "-R", f"blocks {t}", f"{day1}?offset={OFFSET}"],
                                 capture_output=True, text=True).stdout.split()
            blocks = [int(b) for b in out if b.isdigit()]
            if not blocks:
                continue
            share = budget // 3 if t.endswith(".db") else budget // (len(targets) * 2)
            for b in rnd.sample(blocks, min(len(blocks), max(1, share // bs))):
                img.seek(OFFSET + b * bs)
                img.write(os.urandom(bs) if t.endswith(".jpg") else words(800).encode()[:bs].ljust(bs, b"\n"))
                budget -= bs
            if budget <= 0:
                break
    os.rename(day2 + ".tmp", day2)
print(f"day1: {os.stat(day1).st_blocks * 512 >> 20} MiB allocated of 2048 MiB")
