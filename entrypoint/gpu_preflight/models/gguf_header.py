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

# Bounds on what a header may declare, checked before anything is allocated or iterated, so the
# time and memory to read any header stay small (under 2 s and 256 MiB on the CI machine, see
# tests/fuzz) whatever the file claims. Real files are far inside them: a few dozen metadata keys,
# at most a few thousand tensors per file, vocabularies of at most 262k tokens, merges lists of
# up to ~500k, chat templates of tens of KiB.
MAX_KV = 1 << 16  # metadata keys
MAX_TENSORS = 1 << 15  # tensor infos in one file (Arctic-style per-expert files: ~13.5k)
MAX_ARRAY = 1 << 21  # elements of one array
MAX_STRING = 16 << 20  # bytes of one kept string
MAX_KEPT_BYTES = 64 << 20  # bytes of strings kept, over the whole header
MAX_WORK = 1 << 22  # array elements visited (kept or skipped), over the whole header
MAX_KEPT = 1 << 18  # array elements kept as Python values, over the whole header
MAX_NESTING = 2  # arrays of arrays; real files have none
MAX_DIM = 1 << 48  # one tensor dimension
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
        self.kept_bytes = 0
        self.work = 0
        self.kept = 0

    def spend(self, n: int) -> None:
        self.work += n
        if self.work > MAX_WORK:
            raise GGUFHeaderError(
                f"header arrays hold more than {MAX_WORK} elements in all; refusing to read on"
            )

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

    def string(self, what: str = "string") -> str:
        at = self.pos
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise GGUFHeaderError(
                f"{what} at byte {at} declares {n} bytes (at most {MAX_STRING} are accepted)"
            )
        self.kept_bytes += n
        if self.kept_bytes > MAX_KEPT_BYTES:
            raise GGUFHeaderError(f"header strings exceed {MAX_KEPT_BYTES} bytes in all")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, n: int) -> None:
        # Vocabularies: hundreds of thousands of strings, skipped without copying them.
        buf, size, pos = self.buf, self.size, self.pos
        unpack_from = struct.unpack_from
        for _ in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.take(8)  # raises, naming the position
            pos += 8 + unpack_from("<Q", buf, pos)[0]
            if pos > size:
                self.pos = pos
                raise GGUFHeaderError(
                    f"a string in an array runs past the end of the file ({size} bytes)"
                )
        self.pos = pos

    def count(self, what: str, limit: int) -> int:
        at = self.pos
        n = self.unpack("<Q")
        if n > limit or n > self.size:
            raise GGUFHeaderError(
                f"{what} count {n} at byte {at} is not believable for a {self.size}-byte file "
                f"(at most {limit} are accepted)"
            )
        return int(n)


def _value(c: _Cursor, vtype: int, nesting: int = 0) -> Any:
    if vtype in _SCALAR:
        return c.unpack(_SCALAR[GGUFValueType(vtype)])
    if vtype == GGUFValueType.STRING:
        return c.string()
    if vtype == GGUFValueType.ARRAY:
        if nesting >= MAX_NESTING:
            raise GGUFHeaderError(f"arrays nested more than {MAX_NESTING} deep at byte {c.pos}")
        etype = c.unpack("<I")
        n = c.count("array", MAX_ARRAY)
        c.spend(n)
        if n > KEEP_ARRAY:
            if etype == GGUFValueType.STRING:
                c.skip_strings(n)
            elif etype in _SCALAR:
                c.skip(n * struct.calcsize(_SCALAR[GGUFValueType(etype)]))
            else:
                raise GGUFHeaderError(f"long array of type {etype} is not supported")
            return ArrayLength(n)
        c.kept += n
        if c.kept > MAX_KEPT:
            raise GGUFHeaderError(f"header arrays keep more than {MAX_KEPT} values in all")
        return [_value(c, etype, nesting + 1) for _ in range(n)]
    raise GGUFHeaderError(f"unknown metadata value type {vtype} at byte {c.pos}")


def read_header(path: Path) -> GGUFHeader:
    """The header of one GGUF file. The caller checks it is a regular file (boundedio)."""
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
        n_tensors, n_kv = c.count("tensor", MAX_TENSORS), c.count("metadata", MAX_KV)
        # Each key needs at least 12 bytes and each tensor info at least 24: a count the file
        # cannot hold is refused before the loops start.
        if n_kv * 12 + n_tensors * 24 > size - c.pos:
            raise GGUFHeaderError(
                f"{n_kv} metadata keys and {n_tensors} tensor infos cannot fit in {size} bytes"
            )
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string("metadata key")
            fields[key] = _value(c, c.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string("tensor name")
            n_dims = c.unpack("<I")
            if n_dims > 8:
                raise GGUFHeaderError(f"tensor {name[:80]} has {n_dims} dimensions")
            shape: tuple[int, ...] = struct.unpack(f"<{n_dims}Q", c.take(8 * n_dims))
            if any(d > MAX_DIM for d in shape):
                raise GGUFHeaderError(f"tensor {name[:80]} has a dimension above 2^48: {shape}")
            ttype, offset = c.unpack("<I"), c.unpack("<Q")
            try:
                qt = GGMLQuantizationType(ttype)
                block, tsize = GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                raise GGUFHeaderError(f"tensor {name[:80]} has unknown type {ttype}") from None
            n = 1
            for d in shape:
                n *= d
            infos.append((name, shape, qt.name, n // block * tsize, offset))
        align = fields.get("general.alignment", 32)
        if (
            not isinstance(align, int)
            or isinstance(align, bool)
            or align <= 0
            or align & (align - 1)
            or align > 1 << 20
        ):
            raise GGUFHeaderError(f"general.alignment {align!r} is not a power of two")
        data_start = (c.pos + align - 1) // align * align
    tensors = tuple(TensorInfo(nm, sh, tn, nb, data_start + off) for nm, sh, tn, nb, off in infos)
    return GGUFHeader(version, fields, tensors, size)
