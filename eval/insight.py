#!/usr/bin/env python3
"""Evaluation of snapshot insight on real ext4 guest images.

Builds a GPT + ext4 guest disk (documents of many types, a SQLite
database, logs, real ELF binaries, media), backs it up over six ordinary
days, then plays one scenario per vault over three more days: benign heavy
days (an OS upgrade, gzip of old logs, a zip archive, a media import, a
database vacuum) and attacks (full encryption with renames and notes,
intermittent encryption in place, slow encryption over several days,
head-only encryption, a wiper). Every change is made to the disk image
itself, the way it happens in a guest: debugfs for file operations, and
for in-place attacks the file's own blocks are overwritten.

Prints, per scenario, where Cairn flagged it, its false alarms and whether
its clean point is right, beside a change-rate-only detector (what the
commercial products show). Exits 1 when Cairn misses a target: every
attack flagged at its first affected snapshot, no benign snapshot flagged,
the clean point exact.

Usage: eval/insight.py [--cairn PATH] [--work DIR] [--keep]
"""

import argparse
import gzip
import io
import json
import os
import random
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

PART_OFFSET = 1 << 20
BLOCK = 4096
IMAGE_MIB = 160
DAY0 = "2026-05-04"  # a Monday
BASE_DAYS = 6
SCENARIO_DAYS = 3

WORDS = ("invoice customer revenue quarter meeting project budget contract "
         "delivery schedule report summary analysis forecast payroll vendor "
         "approval review draft final account balance order shipment").split()


def text(rnd, n):
    out = []
    size = 0
    while size < n:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 14)))
        line = f"{line.capitalize()}, ref {rnd.randint(1000, 99999)}.\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n].encode()


def docx(rnd, n):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships/>')
        paras = "".join(f"<w:p><w:r><w:t>{t}</w:t></w:r></w:p>"
                        for t in text(rnd, n).decode().splitlines())
        z.writestr("word/document.xml", f'<?xml version="1.0"?><w:document><w:body>{paras}</w:body></w:document>')
    return b.getvalue()


def xlsx(rnd, n):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        rows = "".join(f'<row r="{i}"><c><v>{rnd.randint(0, 10**6)}</v></c><c><v>{rnd.random():.6f}</v></c></row>'
                       for i in range(n // 60))
        z.writestr("xl/worksheets/sheet1.xml", f'<?xml version="1.0"?><worksheet><sheetData>{rows}</sheetData></worksheet>')
    return b.getvalue()


def pdf(rnd, n):
    stream = zlib.compress(b"BT /F1 12 Tf 72 712 Td (" + text(rnd, n) + b") Tj ET")
    body = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
            b"3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n"
            + f"4 0 obj << /Length {len(stream)} /Filter /FlateDecode >> stream\n".encode()
            + stream + b"\nendstream endobj\n")
    return body + f"xref\n0 5\ntrailer << /Root 1 0 R >>\nstartxref\n{len(body)}\n%%EOF\n".encode()


def jpeg(rnd, n):
    seg = lambda m, p: b"\xff" + bytes([m]) + struct.pack(">H", len(p) + 2) + p
    data = rnd.randbytes(n).replace(b"\xff", b"\xff\x00")
    return (b"\xff\xd8" + seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + seg(0xDB, b"\x00" + bytes(range(1, 65)))
            + seg(0xC0, struct.pack(">BHHB", 8, 480, 640, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
            + seg(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00") + data + b"\xff\xd9")


def png(rnd, n):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    w = 256
    h = max(1, n // (w * 3))
    raw = b"".join(b"\x00" + rnd.randbytes(w * 3) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def mp4(rnd, n):
    return struct.pack(">I", 24) + b"ftypmp42\x00\x00\x00\x00mp42isom" + struct.pack(">I", n + 8) + b"mdat" + rnd.randbytes(n)


def sqlite_db(rnd, rows):
    fd, path = tempfile.mkstemp(suffix=".db")
    os.close(fd)
    os.unlink(path)
    db = sqlite3.connect(path)
    db.execute("create table orders(id integer primary key, customer text, total real, note text)")
    db.executemany("insert into orders(customer, total, note) values (?, ?, ?)",
                   [(f"customer {rnd.randint(1, 500)}", rnd.random() * 1000, text(rnd, 120).decode()) for _ in range(rows)])
    db.commit()
    db.close()
    data = open(path, "rb").read()
    os.unlink(path)
    return data


DOC_MAKERS = [("docx", docx), ("xlsx", xlsx), ("pdf", pdf), ("txt", text), ("csv", text), ("md", text)]


class Guest:
    """A disk image and the operations a guest would do on its files."""

    def __init__(self, image, work):
        self.image = image
        self.work = work
        self.spec = f"{image}?offset={PART_OFFSET}"

    def debugfs(self, cmds, write=True):
        path = os.path.join(self.work, "debugfs.cmd")
        with open(path, "w") as f:
            f.write("\n".join(cmds) + "\n")
        args = ["debugfs"] + (["-w"] if write else []) + ["-f", path, self.spec]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"debugfs failed: {r.stderr}")
        return r.stdout

    def read(self, path):
        out = os.path.join(self.work, "dump.bin")
        self.debugfs([f"dump {path} {out}"], write=False)
        data = open(out, "rb").read()
        os.unlink(out)
        return data

    def blocks(self, path):
        out = self.debugfs([f"blocks {path}"], write=False)
        return [int(x) for x in out.split() if x.isdigit()]

    def write_files(self, files, epoch):
        """Writes (path, bytes) as new files (replacing existing ones)."""
        cmds = []
        for i, (path, data) in enumerate(files):
            local = os.path.join(self.work, f"up{i}")
            with open(local, "wb") as f:
                f.write(data)
            cmds += [f"rm {path}", f"write {local} {path}", f"sif {path} mtime @{epoch}"]
        self.debugfs(cmds)
        for i in range(len(files)):
            os.unlink(os.path.join(self.work, f"up{i}"))

    def remove(self, paths):
        self.debugfs([f"rm {p}" for p in paths])

    def rename(self, pairs):
        cmds = []
        for a, b in pairs:
            cmds += [f"ln {a} {b}", f"unlink {a}"]
        self.debugfs(cmds)

    def overwrite_in_place(self, path, transform):
        """Rewrites a file's bytes where they lie on disk: same inode, same
        size, same mtime — what in-place encryption does."""
        data = self.read(path)
        new = transform(data)
        assert len(new) == len(data)
        blocks = self.blocks(path)
        with open(self.image, "r+b") as f:
            for i, blk in enumerate(blocks):
                piece = new[i * BLOCK:(i + 1) * BLOCK]
                if not piece:
                    break
                f.seek(PART_OFFSET + blk * BLOCK)
                f.write(piece)


def host_binaries():
    """Real programs of this machine, 20–400 KB: ELF binaries and scripts."""
    d = "/usr/bin"
    return sorted(os.path.join(d, p) for p in os.listdir(d)
                  if os.path.isfile(os.path.join(d, p)) and 20_000 < os.path.getsize(os.path.join(d, p)) < 400_000)


def build_tree(root, rnd):
    docs = []
    for d in ["etc", "usr/bin", "var/log", "var/lib/app", "var/lib/dpkg", "srv/www",
              "home/anna/Documents/finance", "home/anna/Documents/projects", "home/anna/Pictures",
              "home/ben/Documents", "home/ben/Videos"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    open(os.path.join(root, "etc/hostname"), "w").write("files01\n")
    open(os.path.join(root, "etc/os-release"), "w").write('ID=debian\nVERSION_ID="12"\n')
    for i in range(40):
        open(os.path.join(root, f"srv/www/page{i}.html"), "wb").write(b"<html><body>" + text(rnd, 3000) + b"</body></html>")
    for b in host_binaries()[:120]:
        shutil.copyfile(b, os.path.join(root, "usr/bin", os.path.basename(b)))
    open(os.path.join(root, "var/lib/dpkg/status"), "wb").write(text(rnd, 200_000))
    for name in ["syslog", "syslog.1", "auth.log", "auth.log.1", "app.log", "app.log.1", "app.log.2"]:
        open(os.path.join(root, "var/log", name), "wb").write(text(rnd, 300_000))
    open(os.path.join(root, "var/lib/app/orders.sqlite"), "wb").write(sqlite_db(rnd, 6000))
    folders = ["home/anna/Documents/finance", "home/anna/Documents/projects", "home/ben/Documents"]
    for i in range(72):
        ext, make = DOC_MAKERS[i % len(DOC_MAKERS)]
        path = f"{folders[i % 3]}/doc{i:03d}.{ext}"
        open(os.path.join(root, path), "wb").write(make(rnd, rnd.randint(12_000, 120_000)))
        docs.append(path)
    for i in range(12):
        open(os.path.join(root, f"home/anna/Pictures/img{i:03d}.jpg"), "wb").write(jpeg(rnd, rnd.randint(100_000, 400_000)))
    return docs


def make_image(work, rnd):
    root = os.path.join(work, "tree")
    docs = build_tree(root, rnd)
    image = os.path.join(work, "base.img")
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", image], check=True, capture_output=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, "-E", f"offset={PART_OFFSET}",
                    image, f"{IMAGE_MIB - 2}M"], check=True, capture_output=True)
    shutil.rmtree(root)
    return image, docs


def day_time(day):
    return f"2026-05-{4 + day:02d}T02:00:00Z"


def epoch(day):
    return 1777860000 + day * 86400


# --- what happens on each day ---------------------------------------------

def ordinary_day(g, rnd, day, docs):
    """A working day: a few documents edited, logs appended, a file added."""
    files = []
    live = [d for d in docs if g.exists(d)]
    for path in rnd.sample(live, min(3, len(live))):
        ext = path.rsplit(".", 1)[1]
        make = dict(DOC_MAKERS)[ext]
        files.append((path, make(rnd, rnd.randint(12_000, 120_000))))
    for log in ["var/log/syslog", "var/log/app.log", "var/log/auth.log"]:
        files.append((log, g.read(log) + text(rnd, 40_000)))
    files.append((f"home/ben/Documents/notes-day{day}.txt", text(rnd, 5000)))
    g.write_files(files, epoch(day))


def keystream(rnd, n):
    return rnd.randbytes(n)


def encrypt_spans(data, rnd, span, every):
    """Encrypts `span` bytes of every `every` (intermittent encryption)."""
    out = bytearray(data)
    ks = keystream(rnd, len(data))
    for start in range(0, len(data), every):
        for i in range(start, min(start + span, len(data))):
            out[i] ^= ks[i]
    return bytes(out)


def benign_upgrade(g, rnd, day, docs):
    names = g.debugfs(["ls -p usr/bin"], write=False)
    bins = [l.split("/")[5] for l in names.splitlines() if l.startswith("/") and l.split("/")[5] not in (".", "..")]
    host = host_binaries()
    elf = [p for p in host if open(p, "rb").read(4) == b"\x7fELF"]
    scripts = [p for p in host if p not in elf]
    files = []
    for b in bins[: int(len(bins) * 0.8)]:
        # The new version: another real program of the same kind (machine
        # code or script), as a rebuild rewrites nearly every byte.
        old = g.read(f"usr/bin/{b}")
        pool = elf if old[:4] == b"\x7fELF" else scripts
        files.append((f"usr/bin/{b}", open(rnd.choice(pool), "rb").read()))
    files.append(("var/lib/dpkg/status", text(rnd, 210_000)))
    g.write_files(files, epoch(day))


def benign_gzip_logs(g, rnd, day, docs):
    files = []
    old = ["var/log/syslog.1", "var/log/auth.log.1", "var/log/app.log.1", "var/log/app.log.2"]
    for log in old:
        files.append((log + ".gz", gzip.compress(g.read(log))))
    g.write_files(files, epoch(day))
    g.remove(old)


def benign_zip_archive(g, rnd, day, docs):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for d in docs[:30]:
            if g.exists(d):
                z.writestr(d.rsplit("/", 1)[1], g.read(d))
    g.write_files([("home/anna/Documents/archive-2025.zip", b.getvalue())], epoch(day))


def benign_media_import(g, rnd, day, docs):
    files = []
    for i in range(25):
        files.append((f"home/anna/Pictures/import{day}-{i:03d}.jpg", jpeg(rnd, rnd.randint(500_000, 1_500_000))))
    for i in range(4):
        files.append((f"home/anna/Pictures/import{day}-{i:03d}.png", png(rnd, 400_000)))
    for i in range(3):
        files.append((f"home/ben/Videos/clip{day}-{i}.mp4", mp4(rnd, 4_000_000)))
    g.write_files(files, epoch(day))


def benign_vacuum(g, rnd, day, docs):
    path = os.path.join(g.work, "vac.sqlite")
    open(path, "wb").write(g.read("var/lib/app/orders.sqlite"))
    db = sqlite3.connect(path)
    db.execute("delete from orders where id % 3 = 0")
    db.commit()
    db.execute("vacuum")
    db.close()
    data = open(path, "rb").read()
    os.unlink(path)
    g.write_files([("var/lib/app/orders.sqlite", data)], epoch(day))


NOTE = (b"!!! ALL YOUR FILES HAVE BEEN ENCRYPTED !!!\n\nYour documents, databases and photos are encrypted.\n"
        b"To decrypt them you need the private key. Install Tor Browser and open\n"
        b"http://k3vtq5xjyfyzq5wkwvq6fs3hq6pqmrg4q3fwz3frbgu3ouipy2nx5zqd.onion/ with your personal ID 4F2A-91C3.\n"
        b"Pay 0.5 BTC to the bitcoin wallet shown there. Do not rename the files.\n")


def attack_full(g, rnd, day, docs):
    files = []
    live = [d for d in docs if g.exists(d)]
    for d in live:
        data = g.read(d)
        files.append((d + ".locked", bytes(a ^ b for a, b in zip(data, keystream(rnd, len(data))))))
    folders = sorted({d.rsplit("/", 1)[0] for d in live})
    for f in folders:
        files.append((f"{f}/README_RESTORE_FILES.txt", NOTE))
    g.write_files(files, epoch(day))
    g.remove(live)


def attack_intermittent(span, every):
    def run(g, rnd, day, docs):
        for d in [d for d in docs if g.exists(d)][::2]:
            g.overwrite_in_place(d, lambda data: encrypt_spans(data, rnd, span, every))
    return run


def attack_slow(g, rnd, day, docs):
    # A few percent of the documents each day, whole files, in place.
    live = [d for d in docs if g.exists(d)]
    start = (day - BASE_DAYS) * 2
    for d in live[start:start + 2]:
        g.overwrite_in_place(d, lambda data: encrypt_spans(data, rnd, 1, 1))


def attack_head_only(g, rnd, day, docs):
    for d in [d for d in docs if g.exists(d)]:
        g.overwrite_in_place(d, lambda data: encrypt_spans(data[:4096], rnd, 1, 1) + data[4096:])


def attack_wiper(g, rnd, day, docs):
    for d in [d for d in docs if g.exists(d)][:30]:
        g.overwrite_in_place(d, lambda data: bytes(len(data)))


def exists(self, path):
    r = subprocess.run(["debugfs", "-R", f"stat {path}", self.spec], capture_output=True, text=True)
    return "Inode:" in r.stdout


Guest.exists = exists

# name, kind, what happens on scenario days 1..3 (None: an ordinary day)
SCENARIOS = [
    ("ordinary days", "benign", [None, None, None]),
    ("OS package upgrade", "benign", [benign_upgrade, None, None]),
    ("gzip of old logs", "benign", [benign_gzip_logs, None, None]),
    ("zip archive", "benign", [benign_zip_archive, None, None]),
    ("media import", "benign", [benign_media_import, None, None]),
    ("database vacuum", "benign", [benign_vacuum, None, None]),
    ("full encryption + renames + notes", "attack", [attack_full, None, None]),
    ("intermittent 64/192 in place", "attack", [attack_intermittent(64, 192), None, None]),
    ("intermittent 16/32 in place", "attack", [attack_intermittent(16, 32), None, None]),
    ("slow: 2 docs/day over 3 days", "attack", [attack_slow, attack_slow, attack_slow]),
    ("head-only (first 4 KiB)", "attack", [attack_head_only, None, None]),
    ("wiper (zeros in place)", "attack", [attack_wiper, None, None]),
]


def run(cmd, env, ok=(0,)):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr}")
    return r


def rate_only(snaps):
    """The change-rate-only detector: flag a snapshot whose change rate is
    over 3x the median of the ones before it, or whose changed data is
    mostly high-entropy."""
    flags = []
    for i, s in enumerate(snaps):
        prior = [p["change_rate"] for p in snaps[1:i] if p["change_rate"] is not None]
        hot = len(prior) >= 3 and s["change_rate"] is not None and s["change_rate"] > 3 * max(statistics.median(prior), 1)
        dense = s["high_entropy_share"] >= 0.5 and s["changed_bytes"] >= (1 << 20)
        flags.append(bool(i > 0 and (hot or dense)))
    return flags


def judge(flags, kind, first_attack):
    """(first flagged index or None, false alarms, clean point index)."""
    n = len(flags)
    false_alarms = sum(1 for i, f in enumerate(flags) if f and (kind == "benign" or i < first_attack))
    first = next((i for i, f in enumerate(flags) if f), None)
    if kind == "attack":
        detected = next((i for i in range(first_attack, n) if flags[i]), None)
    else:
        detected = first
    # Clean point: newest unflagged snapshot before the trailing flagged run.
    j = n - 1
    while j >= 0 and flags[j]:
        j -= 1
    return detected, false_alarms, j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cairn", default=os.environ.get("CAIRN_BIN", "cairn"))
    ap.add_argument("--work")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="cairn-eval.")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, CAIRN_PASSWORD="eval", CAIRN_LOG="error")
    rnd = random.Random(2026)
    image, docs = make_image(work, rnd)
    base_vault = os.path.join(work, "vault-base")
    run([args.cairn, "--vault", base_vault, "init"], env)
    g = Guest(image, work)
    for day in range(BASE_DAYS):
        if day > 0:
            ordinary_day(g, rnd, day, docs)
        run([args.cairn, "--vault", base_vault, "backup", image, "--name", "files01", "--time", day_time(day), "-q"], env)
    rows = []
    ok = True
    for sname, kind, days in SCENARIOS:
        srnd = random.Random(sname)
        simg = os.path.join(work, "scenario.img")
        svault = os.path.join(work, "vault-scenario")
        shutil.rmtree(svault, ignore_errors=True)
        subprocess.run(["cp", "-a", "--sparse=always", image, simg], check=True)
        subprocess.run(["cp", "-a", base_vault, svault], check=True)
        sg = Guest(simg, work)
        for k, act in enumerate(days):
            day = BASE_DAYS + k
            (act or ordinary_day)(sg, srnd, day, docs)
            run([args.cairn, "--vault", svault, "backup", simg, "--name", "files01", "--time", day_time(day), "-q"], env, ok=(0, 3))
        r = run([args.cairn, "--vault", svault, "--json", "timeline", "files01"], env, ok=(0, 3))
        tl = json.loads(r.stdout)
        snaps = tl["snapshots"]
        first_attack = BASE_DAYS if kind == "attack" else len(snaps)
        cairn_flags = [s["verdict"] != "clean" for s in snaps]
        c_det, c_false, _ = judge(cairn_flags, kind, first_attack)
        cairn_clean = next((i for i, s in enumerate(snaps) if s["id"] == tl["last_clean"]), None)
        b_det, b_false, b_clean = judge(rate_only(snaps), kind, first_attack)
        want_clean = BASE_DAYS - 1 if kind == "attack" else len(snaps) - 1
        c_ok = (c_false == 0 and cairn_clean == want_clean
                and (kind == "benign" or c_det == first_attack))
        ok &= c_ok
        verdicts = " ".join({"clean": ".", "suspicious": "S", "compromised": "C"}[s["verdict"]] for s in snaps[BASE_DAYS - 1:])
        reason = next((s["reasons"][0] for s in snaps[BASE_DAYS:] if s["verdict"] != "clean" and s["reasons"]), "")
        rows.append((sname, kind, c_det, c_false, cairn_clean == want_clean, b_det, b_false, b_clean == want_clean,
                     verdicts, reason, c_ok))
        if args.keep:
            shutil.copytree(svault, os.path.join(work, "vault-" + sname.replace(" ", "_").replace("/", "-")))

    def at(i):
        return "-" if i is None else f"day {i}"

    print(f"{'scenario':<36} {'kind':<7} | {'Cairn: flagged':<14} {'false':>5} {'clean pt':>8} | "
          f"{'rate-only: flagged':<18} {'false':>5} {'clean pt':>8} | verdicts d5..d8  first reason")
    for (sname, kind, c_det, c_false, c_clean, b_det, b_false, b_clean, verdicts, reason, c_ok) in rows:
        print(f"{sname:<36} {kind:<7} | {at(c_det) if kind == 'attack' else '-':<14} {c_false:>5} "
              f"{'right' if c_clean else 'WRONG':>8} | {at(b_det) if kind == 'attack' else '-':<18} {b_false:>5} "
              f"{'right' if b_clean else 'WRONG':>8} | {verdicts:<16} {reason[:110]}{'' if c_ok else '   <-- MISSED TARGET'}")
    print(f"(attacks start on day {BASE_DAYS}; snapshots are days 0..{BASE_DAYS + SCENARIO_DAYS - 1}; "
          f"clean point right = day {BASE_DAYS - 1} for attacks, the latest for benign histories)")
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if not ok:
        print("insight evaluation: Cairn missed a target", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
