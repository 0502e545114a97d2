"""The one wrapper around NVML (``pynvml`` from nvidia-ml-py). Nothing else imports pynvml.

Modelled on nvitop's ``nvmlQuery``: every call goes through ``NvmlSession.query``, which turns an
``NVMLError`` into a default and keeps the error for the notes; versioned functions (memory info
v2) are resolved once per session. The library module is injectable so tests pass a recorded fake.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


def load_pynvml() -> ModuleType | str:
    """The real pynvml module, or why it cannot be imported."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py missing from the environment
        return f"the nvidia-ml-py package is not installed ({exc})"
    return typing.cast(ModuleType, pynvml)


@dataclass(frozen=True)
class NvmlFailure:
    """NVML could not start at all; ``kind`` is one of the FATAL_* names below."""

    kind: str
    message: str


LIBRARY_NOT_FOUND = "library-not-found"
DRIVER_NOT_LOADED = "driver-not-loaded"
LIB_DRIVER_MISMATCH = "lib-driver-mismatch"
NO_PERMISSION = "no-permission"
OTHER = "other"

_FATAL_HINTS = {
    LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 (the NVIDIA driver's NVML library) was not found: was the "
    "container started with `--gpus all` (or a compose `deploy.resources.reservations.devices` "
    "entry), and is the NVIDIA Container Toolkit installed on the host?",
    DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded: is there an NVIDIA GPU, and does "
    "`nvidia-smi` work on the host?",
    LIB_DRIVER_MISMATCH: "the NVML library and the kernel driver are different versions (a driver "
    "update without a reboot?): reboot the host or reload the nvidia modules",
    NO_PERMISSION: "no permission to open the NVIDIA devices (/dev/nvidia*): run with access to them",
}


def classify(lib: Any, exc: BaseException) -> NvmlFailure:
    """Map an nvmlInit error to a failure kind and a message a user can act on."""
    table = [
        ("NVMLError_LibraryNotFound", LIBRARY_NOT_FOUND),
        ("NVMLError_DriverNotLoaded", DRIVER_NOT_LOADED),
        ("NVMLError_LibRmVersionMismatch", LIB_DRIVER_MISMATCH),
        ("NVMLError_NoPermission", NO_PERMISSION),
    ]
    for name, kind in table:
        cls = getattr(lib, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return NvmlFailure(kind, _FATAL_HINTS[kind])
    return NvmlFailure(OTHER, f"NVML failed to start: {exc}")


@dataclass
class NvmlSession:
    """An open NVML session. ``query`` never raises NVMLError: it returns the default instead."""

    lib: Any
    errors: list[str] = field(default_factory=list)
    _memory_v2: bool | None = None

    def query(self, what: str, func: Callable[..., T], *args: Any, default: Any = None) -> Any:
        try:
            return func(*args)
        except self.lib.NVMLError as exc:
            self.errors.append(f"{what}: {self.error_text(exc)}")
            return default

    def error_text(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    def is_not_supported(self, exc: BaseException) -> bool:
        cls = getattr(self.lib, "NVMLError_NotSupported", None)
        return isinstance(cls, type) and isinstance(exc, cls)

    def memory_info(self, handle: Any) -> tuple[Any, str] | tuple[None, str]:
        """(memory info, source): v2 where the driver has it (it reports `reserved`), else v1."""
        lib = self.lib
        if self._memory_v2 is not False:
            version = getattr(lib, "nvmlMemory_v2", None)
            if version is not None:
                try:
                    info = lib.nvmlDeviceGetMemoryInfo(handle, version=version)
                    self._memory_v2 = True
                    return info, "nvml-v2"
                except lib.NVMLError as exc:
                    # Old drivers answer FunctionNotFound / NotSupported / ArgumentVersionMismatch.
                    self._memory_v2 = False
                    self.errors.append(
                        f"memory info v2 unavailable ({self.error_text(exc)}); using v1"
                    )
                except TypeError:
                    self._memory_v2 = False  # a pynvml too old to take `version=`
        try:
            return lib.nvmlDeviceGetMemoryInfo(handle), "nvml-v1"
        except lib.NVMLError as exc:
            self.errors.append(f"memory info: {self.error_text(exc)}")
            return None, "nvml-v1"


@contextmanager
def nvml_session(lib: Any) -> Iterator[NvmlSession | NvmlFailure]:
    """Open NVML for the duration of the block; yields a failure value instead of raising."""
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        yield classify(lib, exc)
        return
    except OSError as exc:  # a broken libnvidia-ml.so that fails to dlopen
        yield NvmlFailure(LIBRARY_NOT_FOUND, f"{_FATAL_HINTS[LIBRARY_NOT_FOUND]} ({exc})")
        return
    try:
        yield NvmlSession(lib)
    finally:
        with suppress(lib.NVMLError):
            lib.nvmlShutdown()


def as_text(value: Any) -> str | None:
    """NVML returns bytes from old pynvml releases and str from new ones."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
