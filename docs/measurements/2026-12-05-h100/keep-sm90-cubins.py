"""Shrink onnxruntime-gpu's CUDA provider library for one GPU architecture, so that it compresses
to what one device call may carry (2026-12-05: 64 MiB a call; the wheel is 256 MB).

The library's ``.nv_fatbin`` section holds one cubin per GPU architecture for every kernel. This
overwrites the payload of every ELF cubin whose architecture is not in KEEP with zeros, in place:
offsets, sizes and headers stay, so CUDA still reads the fatbin and picks the entry of the GPU
it runs on. A GPU of another architecture would find no kernel. Not part of the product: a host
with a package registry runs ``pip install -e '.[serve-gpu]'``.

    python3 keep-sm90-cubins.py libonnxruntime_providers_cuda.so out.so
"""

import collections
import struct
import sys

KEEP = {90}  # the H100's sm_90
FATBIN_MAGIC = 0xBA55ED50
ELF_CUBIN = 2  # an entry's kind: 1 PTX, 2 ELF


def fatbin_section(data: bytes) -> tuple[int, int]:
    """(offset, size) of ``.nv_fatbin`` in a 64-bit little-endian ELF file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in sections:
        end = data.index(b"\0", names_at + name)
        if data[names_at + name:end] == b".nv_fatbin":
            return offset, size
    raise SystemExit("no .nv_fatbin section")


def main(src: str, dst: str) -> None:
    data = bytearray(open(src, "rb").read())
    start, size = fatbin_section(bytes(data))
    pos, end, per_arch, zeroed = start, start + size, collections.Counter(), 0
    while pos + 16 <= end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:  # padding between the fatbins
            pos += 8
            continue
        entry, fat_end = pos + header_size, pos + header_size + fat_size
        while entry < fat_end:
            kind, _v, entry_header = struct.unpack_from("<HHI", data, entry)
            payload, = struct.unpack_from("<Q", data, entry + 8)
            arch, = struct.unpack_from("<I", data, entry + 28)
            per_arch[(kind, arch)] += payload
            if kind == ELF_CUBIN and arch not in KEEP:
                data[entry + entry_header:entry + entry_header + payload] = bytes(payload)
                zeroed += payload
            entry += entry_header + payload
        pos = fat_end
    for (kind, arch), n in sorted(per_arch.items()):
        print(f"{'ELF' if kind == ELF_CUBIN else 'PTX'} sm_{arch}: {n:,} bytes")
    print(f"zeroed {zeroed:,} of {size:,} bytes of .nv_fatbin")
    open(dst, "wb").write(data)


if __name__ == "__main__":
    main(*sys.argv[1:3])
