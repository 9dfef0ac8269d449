#!/usr/bin/env python3
"""One more ordinary day on a benchmark image, in place: ~0.5% of the data
rewritten where it lies (blocks of the SQLite database and of every 50th
document, with words), the way a guest overwrites blocks.

Usage: next-day.py IMAGE SEED
"""
import os, random, subprocess, sys

img, seed = sys.argv[1], int(sys.argv[2])
OFFSET = 1 << 20
rnd = random.Random(seed)
targets = ["/home/user/app/orders.db"] + [f"/home/user/Documents/doc-{i:05}.txt"
                                          for i in range(seed % 50, 2500, 50)]
budget = int(os.stat(img).st_blocks * 512 * 0.005)
VOCAB = ("the customer invoice quarterly report server backup ledger meeting notes "
         "revenue project deadline contract shipment payment order support ticket").split()


def page(db):
    """4 KiB as the guest writes them: a database page of records, or a
    document's edited text (words, as people write)."""
    if db:
        return bytes(rnd.getrandbits(8) % 26 + 97 for _ in range(4096))
    text = " ".join(rnd.choice(VOCAB) for _ in range(800)).encode()
    return text[:4096].ljust(4096, b"\n")


with open(img, "r+b") as f:
    for t in targets:
        out = subprocess.run(["debugfs", "-R", f"blocks {t}", f"{img}?offset={OFFSET}"],
                             capture_output=True, text=True).stdout.split()
        blocks = [int(b) for b in out if b.isdigit()]
        if not blocks:
            continue
        share = budget // 2 if t.endswith(".db") else budget // (len(targets) * 2)
        for b in rnd.sample(blocks, min(len(blocks), max(1, share // 4096))):
            f.seek(OFFSET + b * 4096)
            f.write(page(t.endswith(".db")))
            budget -= 4096
        if budget <= 0:
            break
