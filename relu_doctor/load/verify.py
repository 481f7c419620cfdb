"""Check a zip-format model file against its own CRC-32s before anything unpickles it.

`torch.load` (and `torch.jit.load`, `torch.export.load`) read records without checking the
CRC-32 the zip stores for each, so a file with flipped bytes in its weights (bit rot, an
interrupted copy) loads with changed weights and a scan would measure a model that never
existed. One sequential pass streams each record through zlib.crc32 in chunks, so the cost
is one read of the file and a few MiB of memory, whatever its size (see
benchmarks/verify_cost.py).

Formats without checksums (torch's legacy pickle format, .safetensors, plain pickles) cannot
be checked this way: `unverifiable()` says so, for the caller to pass on as a warning.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from relu_doctor.errors import LoadError, param

__all__ = ["CHUNK", "unverifiable", "verify_zip"]

CHUNK = 4 << 20  # bytes read at a time: large enough that crc32, not Python, sets the pace
_AGAIN = (
    f"copy it again from a good source or save it again (to load it unchecked, "
    f"pass {param('verify', False)})"
)
_NO_CHECKSUMS = {
    "torch-legacy": "torch's legacy (pre-1.6) format stores none; re-save it with a current "
    "torch.save to make it verifiable",
    "safetensors": ".safetensors files store none",
    "pickle": "plain pickles store none",
}


def verify_zip(path: Path, spec: str) -> None:
    """Raise LoadError naming the first record whose bytes do not match its CRC-32.

    Reads every record once, in file order; nothing is unpickled or executed.
    """
    name = "(central directory)"
    try:
        with path.open("rb") as f, zipfile.ZipFile(f) as zf:
            buffer = bytearray(CHUNK)
            for info in zf.infolist():
                name = info.filename
                if info.compress_type == zipfile.ZIP_STORED:  # torch's own writer
                    crc = _stored_crc(f, info, memoryview(buffer))
                else:
                    crc = _inflated_crc(zf, info)
                if crc != info.CRC:
                    raise _Damaged(name)
    except _Damaged as exc:
        raise LoadError(
            f"{spec} is damaged: record {name} fails its CRC-32 check (its bytes changed "
            f"after it was saved: an interrupted copy or a failing disk); {_AGAIN}"
        ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise LoadError(
            f"{spec} is damaged: record {name} cannot be read ({detail}); {_AGAIN}"
        ) from exc
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encryption
        detail = " ".join(str(exc).split())[:160]
        raise LoadError(f"{spec}: record {name} cannot be checked ({detail}); {_AGAIN}") from exc
    except OSError as exc:
        raise LoadError(f"cannot read {spec}: {exc.strerror or exc}") from exc


class _Damaged(Exception):
    """A record's bytes do not match the CRC-32 in the central directory."""


_LOCAL = struct.Struct("<4s22xHH")  # signature, (version .. sizes), name length, extra length


def _stored_crc(f: io.BufferedReader, info: zipfile.ZipInfo, buffer: memoryview) -> int:
    """CRC-32 of an uncompressed record, read where torch's reader reads it: after the local
    header, whose name must be the central directory's."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL.size)
    if len(header) != _LOCAL.size:
        raise EOFError("the file ends inside a record header")
    signature, name_len, extra_len = _LOCAL.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile("no record header where the directory points")
    if f.read(name_len) != info.orig_filename.encode("utf-8"):
        raise zipfile.BadZipFile("its header names another record")
    if info.compress_size != info.file_size:
        raise zipfile.BadZipFile("its stored and unpacked sizes differ")
    f.seek(extra_len, 1)
    crc, left = 0, info.compress_size
    while left:
        got = f.readinto(buffer[: min(left, len(buffer))])
        if not got:
            raise EOFError("the file ends inside the record")
        crc = zlib.crc32(buffer[:got], crc)
        left -= got
    return crc


def _inflated_crc(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """CRC-32 of a compressed record (other writers than torch's), streamed out of zipfile."""
    crc = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
    except zipfile.BadZipFile as exc:  # zipfile checks the CRC at the end itself
        if "CRC" in str(exc):
            raise _Damaged(info.filename) from exc
        raise
    return crc


def unverifiable(fmt: str, name: str) -> str | None:
    """The warning for a file whose format carries no checksums, or None when it has them."""
    why = _NO_CHECKSUMS.get(fmt)
    if why is None:
        return None
    return f"{name} cannot be checked for damage: it has no checksums ({why})"
