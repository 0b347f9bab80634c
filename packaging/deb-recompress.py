#!/usr/bin/env python3
"""Recompresses the payload (data.tar.xz) of Debian packages with a 16 MiB xz window.

    packaging/deb-recompress.py PACKAGE.deb...

cargo-deb compresses with xz -6, whose 8 MiB window is smaller than the distance between the
programs of the payload: the code the server, the agent and the command line share is then
stored once per program. With xz -7 (16 MiB, one block, no check, as cargo-deb writes) it is
stored once, and the package is about a sixth smaller. dpkg and the self-update's reader
(which accepts windows up to 16 MiB) read it as before; decompressing needs 17 MiB of memory.

The other members and every header field but the size are kept as they were, so the result
is as reproducible as its input. Needs xz (package xz-utils).
"""

import subprocess
import sys
from pathlib import Path

MAGIC = b"!<arch>\n"
HEADER = 60
XZ = ["xz", "-7", "-T1", "--check=none", "--stdout"]


def members(data, path):
    if not data.startswith(MAGIC):
        sys.exit(f"deb-recompress: {path} is not an ar archive")
    at, out = len(MAGIC), []
    while at < len(data):
        header = data[at:at + HEADER]
        if len(header) != HEADER or header[58:60] != b"`\n":
            sys.exit(f"deb-recompress: {path}: bad member header at byte {at}")
        size = int(header[48:58].decode().strip())
        body = data[at + HEADER:at + HEADER + size]
        out.append((header, body))
        at += HEADER + size + (size % 2)
    return out


def recompress(path):
    data = path.read_bytes()
    parts = members(data, path)
    names = [h[:16].decode().strip().rstrip("/") for h, _ in parts]
    if names[:1] != ["debian-binary"] or "data.tar.xz" not in names:
        sys.exit(f"deb-recompress: {path} has members {names}, not a package with data.tar.xz")
    out = bytearray(MAGIC)
    for header, body in parts:
        if header[:16].decode().strip().rstrip("/") == "data.tar.xz":
            tar = subprocess.run(["xz", "--decompress", "--stdout"], input=body, capture_output=True, check=True).stdout
            body = subprocess.run(XZ, input=tar, capture_output=True, check=True).stdout
            header = header[:48] + str(len(body)).ljust(10).encode() + header[58:]
        out += header + body + (b"\n" if len(body) % 2 else b"")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(out)
    tmp.replace(path)
    print(f"deb-recompress: {path.name}: {len(data):,} -> {len(out):,} bytes")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        recompress(Path(arg))


if __name__ == "__main__":
    main()
