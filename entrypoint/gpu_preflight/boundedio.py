"""Bounded reading of user-supplied files, and range checks for the numbers inside them.

Every file a user can point gpu-preflight at (a profile, a tier table, a model catalog, an NVML
scenario, a model's config.json or safetensors index) comes in through here, so that the same
rules hold for all of them:

- the path must name a regular file; FIFOs, devices (``/dev/zero``), sockets and directories are
  refused *before* the file is opened for reading (``os.stat`` follows symlinks, so a symlink to a
  device is refused too), and the open itself uses ``O_NONBLOCK`` so that a FIFO swapped in between
  the check and the open cannot hang the process;
- at most ``limit`` bytes are read (one per kind of file, see ``LIMITS``), so memory is bounded
  whatever the file claims;
- text is decoded as strict UTF-8; JSON is parsed with NaN/Infinity refused, integers longer than
  ``MAX_INT_DIGITS`` digits refused (Python's own limit is 4300 and ends in a traceback), floats that
  overflow to infinity (``1e400``) refused, and nesting deeper than ``MAX_DEPTH`` refused;
- numbers taken from a file are checked by a ``NumberRule``, whose ``accepted`` text is produced
  by the same object that does the check, so the message cannot drift from the rule.

Every failure is a ``FileInputError`` (an ``InvalidInput``: exit 2) naming the file, the key inside
it where there is one, the offending value truncated to ``SHOW_CHARS`` characters, and what is
accepted.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gpu_preflight.errors import InvalidInput

MIB = 2**20
# Byte caps per kind of file. Each is far above any real file of that kind (the largest real
# safetensors index, DeepSeek-V3's, is about 9 MB; real profiles and scenarios are a few KiB).
LIMITS: dict[str, int] = {
    "profile": 4 * MIB,
    "tiers": 1 * MIB,
    "models": 4 * MIB,  # the built-in catalog is ~40 KiB
    "scenario": 4 * MIB,
    "config": 4 * MIB,
    "safetensors-index": 32 * MIB,
    "receipt": 1 * MIB,  # a real receipt is ~4 KiB
    "plan": 4 * MIB,
}
MAX_DEPTH = 64  # JSON nesting; the schemas here need at most 6
MAX_INT_DIGITS = 40  # 2**128 has 39 digits; no count or size in these files comes near
SHOW_CHARS = 80  # how much of an offending value a message shows
PATH_SHOWN = 4096  # a file's own path is shown whole: it is what the user must find


class FileInputError(InvalidInput):
    """A user-supplied file (or a value inside it) is unusable. Exit 2."""

    def __init__(
        self,
        origin: str,
        problem: str,
        accepted: str | None = None,
        key: str | None = None,
        value: Any = None,
        show_value: bool = False,
    ) -> None:
        self.origin, self.problem, self.accepted, self.key = origin, problem, accepted, key
        where = f"{origin}: {key}" if key else origin
        got = f" (got {shorten(value)})" if show_value else ""
        tail = f". Accepted: {accepted}." if accepted else "."
        super().__init__(f"{where}: {problem}{got}{tail}")


def shorten(value: Any, limit: int = SHOW_CHARS) -> str:
    """``repr`` of a value, cut to ``limit`` characters (huge ints are not converted to text)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return "an integer with too many digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- files --------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: Path, origin: str | None = None) -> os.stat_result:
    """Stat ``path`` (following symlinks) and refuse anything but a regular file. No open."""
    label = origin or str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FileInputError(label, f"cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise FileInputError(label, f"not a usable path ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise FileInputError(label, f"is {_kind(st.st_mode)}", "a regular file")
    return st


def read_bytes(path: Path, limit: int, origin: str | None = None) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes, or a ``FileInputError``."""
    label = origin or str(path)
    st = check_regular(path, origin)
    if st.st_size > limit:
        raise FileInputError(label, f"is {st.st_size} bytes", f"a file of at most {_size(limit)}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileInputError(label, f"cannot read it ({exc.strerror or exc})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the stat and the open
            raise FileInputError(label, "is not a regular file", "a regular file")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - total, MIB))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # the file grew since the stat
                raise FileInputError(label, "grows past the limit", f"at most {_size(limit)}")
    except OSError as exc:
        raise FileInputError(label, f"cannot read it ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n} bytes"


def decode_utf8(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileInputError(
            origin,
            f"is not UTF-8 text (byte {exc.start} is {data[exc.start : exc.start + 1]!r})",
            "UTF-8 encoded JSON",
        ) from None


def read_text(path: Path, limit: int, origin: str | None = None) -> str:
    return decode_utf8(read_bytes(path, limit, origin), origin or str(path))


class _Bad(Exception):
    def __init__(self, problem: str, value: str) -> None:
        super().__init__(problem)
        self.problem, self.value = problem, value


def _constant(name: str) -> NoReturn:
    raise _Bad("non-finite numbers are not JSON", name)


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Bad(f"an integer of {digits} digits", text[:20] + "...")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 1000:
        raise _Bad(f"a number written with {len(text)} characters", text[:20] + "...")
    value = float(text)
    if not math.isfinite(value):
        raise _Bad("a number too large for a 64-bit float", text)
    return value


def depth(doc: Any) -> int:
    """Nesting depth of a parsed JSON document, counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node)
    return deepest


def _python_constant(name: str) -> float:
    if name == "NaN":
        raise _Bad("non-finite numbers are not JSON", name)
    return float(name)  # "Infinity", "-Infinity": what Python's json module writes


def parse_json(text: str, origin: str, max_depth: int = MAX_DEPTH, constants: bool = False) -> Any:
    """``json.loads`` with NaN/Infinity, overlong integers, overflowing floats and deep nesting refused.

    ``constants``: accept Python's Infinity spellings (transformers writes config.json through
    Python's json, e.g. Mamba-2's ``"time_step_limit": [0.0, Infinity]``); the caller says where
    they may stand, and every number it uses still passes a ``NumberRule``, which refuses them."""
    accepted = (
        f"JSON with finite numbers, integers of at most {MAX_INT_DIGITS} digits and nesting "
        f"of at most {max_depth} levels"
    )
    try:
        doc = json.loads(
            text,
            parse_constant=_python_constant if constants else _constant,
            parse_int=_int,
            parse_float=_float,
        )
    except _Bad as exc:
        raise FileInputError(
            origin, exc.problem, accepted, value=exc.value, show_value=True
        ) from None
    except RecursionError:
        raise FileInputError(origin, "nested too deeply", accepted) from None
    except json.JSONDecodeError as exc:
        raise FileInputError(origin, f"not valid JSON ({exc})", accepted) from None
    except ValueError as exc:  # anything else the decoder refuses
        raise FileInputError(origin, f"not valid JSON ({shorten(str(exc))})", accepted) from None
    if depth(doc) > max_depth:
        raise FileInputError(origin, f"nested deeper than {max_depth} levels", accepted)
    return doc


def read_json(path: Path, kind: str, origin: str | None = None, constants: bool = False) -> Any:
    """Read, decode and parse one user-supplied JSON file of a kind listed in ``LIMITS``."""
    label = origin or str(path)
    return parse_json(read_text(path, LIMITS[kind], label), label, constants=constants)


# -- numbers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberRule:
    """What a number in a file may be: finite, optionally integral, within [minimum, maximum]."""

    minimum: float
    maximum: float
    integer: bool = True
    unit: str = ""

    @property
    def accepted(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        lo = _num(self.minimum)
        hi = _num(self.maximum)
        unit = f" {self.unit}" if self.unit else ""
        return f"{kind} from {lo} to {hi}{unit}"

    def problem(self, value: Any) -> str | None:
        """None if ``value`` passes, else what is wrong with it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"is {type(value).__name__}, not a number"
        if isinstance(value, float):
            if not math.isfinite(value):
                return "is not finite"
            if self.integer:  # 32.0 where a count is meant is a wrong type, not a count
                return "is a float, not an integer"
        if value < self.minimum or value > self.maximum:
            return "is out of range"
        return None

    def check(self, value: Any, origin: str, key: str) -> Any:
        """``value`` (an int when ``integer``) if it passes, else a ``FileInputError`` naming key."""
        problem = self.problem(value)
        if problem is not None:
            raise FileInputError(
                origin, problem, self.accepted, key=key, value=value, show_value=True
            )
        if self.integer:
            return int(value)
        return float(value)


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, int) and x >= 2**20 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)
