"""A bounded, skip-ahead reader of the GGUF header: metadata scalars, array lengths, tensor infos.

Why not ``gguf.GGUFReader``: it builds a numpy view per array element, so a 256k-token vocabulary
takes ~14 s to open on this project's CI machine (measured), and preflight must plan in well under
a second. This reader follows the same format (the value-type codes and quant block sizes come
from the ``gguf`` package itself), keeps scalars and short arrays, records only the length of
long arrays (the vocabulary), and checks every length against the file before trusting it.
tests/models/test_files.py cross-checks it against ``GGUFReader`` field by field.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

MAX_COUNT = 1 << 24  # entries in any header table; real files have < 10^4 tensors and keys
KEEP_ARRAY = 4096  # longer arrays (vocabularies, merges) are skipped, their length kept
_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class GGUFHeaderError(ValueError):
    pass


@dataclass(frozen=True)
class ArrayLength:
    """A long array whose elements were skipped."""

    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne0 first)
    type_name: str
    n_bytes: int
    data_offset: int  # absolute offset in the file


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    file_size: int


class _Cursor:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise GGUFHeaderError(
                f"header runs past the end of the file at byte {self.pos} (wants {n} more)"
            )
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFHeaderError(f"header runs past the end of the file at byte {self.pos}")
        self.pos += n

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.take(n).decode("utf-8", errors="replace")

    def count(self, what: str) -> int:
        n = self.unpack("<Q")
        if n > MAX_COUNT or n > self.size:
            raise GGUFHeaderError(f"{what} count {n} is not believable for a {self.size}-byte file")
        return int(n)


def _value(c: _Cursor, vtype: int) -> Any:
    if vtype in _SCALAR:
        return c.unpack(_SCALAR[GGUFValueType(vtype)])
    if vtype == GGUFValueType.STRING:
        return c.string()
    if vtype == GGUFValueType.ARRAY:
        etype = c.unpack("<I")
        n = c.count("array")
        if n > KEEP_ARRAY:
            if etype == GGUFValueType.STRING:
                for _ in range(n):
                    c.skip(c.unpack("<Q"))
            elif etype in _SCALAR:
                c.skip(n * struct.calcsize(_SCALAR[GGUFValueType(etype)]))
            else:
                raise GGUFHeaderError(f"long array of type {etype} is not supported")
            return ArrayLength(n)
        return [_value(c, etype) for _ in range(n)]
    raise GGUFHeaderError(f"unknown metadata value type {vtype} at byte {c.pos}")


def read_header(path: Path) -> GGUFHeader:
    size = path.stat().st_size
    if size < 24:
        raise GGUFHeaderError(f"{size} bytes is too short for a GGUF header")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        c = _Cursor(mm, size)
        if c.take(4) != b"GGUF":
            raise GGUFHeaderError("bad magic")
        version = c.unpack("<I")
        if version not in (2, 3):
            raise GGUFHeaderError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = c.count("tensor"), c.count("metadata")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string()
            fields[key] = _value(c, c.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            n_dims = c.unpack("<I")
            if n_dims > 8:
                raise GGUFHeaderError(f"tensor {name} has {n_dims} dimensions")
            shape = tuple(c.unpack("<Q") for _ in range(n_dims))
            ttype, offset = c.unpack("<I"), c.unpack("<Q")
            try:
                qt = GGMLQuantizationType(ttype)
                block, tsize = GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                raise GGUFHeaderError(f"tensor {name} has unknown type {ttype}") from None
            n = 1
            for d in shape:
                n *= d
            infos.append((name, shape, qt.name, n // block * tsize, offset))
        align = fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise GGUFHeaderError(f"general.alignment {align!r} is not a power of two")
        data_start = (c.pos + align - 1) // align * align
    tensors = tuple(TensorInfo(nm, sh, tn, nb, data_start + off) for nm, sh, tn, nb, off in infos)
    return GGUFHeader(version, fields, tensors, size)
