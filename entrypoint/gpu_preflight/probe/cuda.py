"""The one module that touches the CUDA driver API (``cuda-bindings``, imported lazily).

``open_cuda`` returns a small ``CudaDevice`` (page-locked host buffers, device buffers, synchronous
copies) or a string saying why CUDA is unavailable; nothing here raises for a missing driver.
Install the binding with ``pip install 'gpu-preflight[cuda]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class CudaDevice(Protocol):
    def host_alloc(self, nbytes: int) -> int | None: ...  # None: the driver refused
    def host_free(self, ptr: int) -> None: ...
    def device_alloc(self, nbytes: int) -> int | None: ...
    def device_free(self, ptr: int) -> None: ...
    def copy_h2d(self, dst: int, src: int, nbytes: int) -> None: ...
    def copy_d2h(self, dst: int, src: int, nbytes: int) -> None: ...


class _Driver:
    def __init__(self, drv: Any, ctx: Any) -> None:
        self.drv = drv
        self.ctx = ctx

    def _ok(self, ret: Any) -> Any:
        err = ret[0] if isinstance(ret, tuple) else ret
        if err != self.drv.CUresult.CUDA_SUCCESS:
            return None
        return ret[1] if isinstance(ret, tuple) and len(ret) > 1 else True

    def host_alloc(self, nbytes: int) -> int | None:
        ptr = self._ok(self.drv.cuMemHostAlloc(nbytes, 0))
        return int(ptr) if ptr is not None else None

    def host_free(self, ptr: int) -> None:
        self.drv.cuMemFreeHost(ptr)

    def device_alloc(self, nbytes: int) -> int | None:
        ptr = self._ok(self.drv.cuMemAlloc(nbytes))
        return int(ptr) if ptr is not None else None

    def device_free(self, ptr: int) -> None:
        self.drv.cuMemFree(ptr)

    def copy_h2d(self, dst: int, src: int, nbytes: int) -> None:
        self.drv.cuMemcpyHtoD(dst, src, nbytes)

    def copy_d2h(self, dst: int, src: int, nbytes: int) -> None:
        self.drv.cuMemcpyDtoH(dst, src, nbytes)


def _driver_module() -> Any | str:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.8 spelling
        except ImportError:
            return "the CUDA driver binding is not installed (pip install 'gpu-preflight[cuda]')"
    return driver


@contextmanager
def open_cuda(ordinal: int = 0) -> Iterator[CudaDevice | str]:
    """A CUDA context on one device for the block (the primary context, released after).

    ``ordinal`` is a CUDA ordinal, as cuDeviceGet takes it: the position among the devices this
    process's CUDA_VISIBLE_DEVICES leaves (``GpuDevice.cuda_ordinal``), not an NVML index.
    """
    drv = _driver_module()
    if isinstance(drv, str):
        yield drv
        return
    try:
        (err,) = drv.cuInit(0)
        if err != drv.CUresult.CUDA_SUCCESS:
            yield f"cuInit failed ({err}): no usable CUDA driver"
            return
        err, dev = drv.cuDeviceGet(ordinal)
        if err != drv.CUresult.CUDA_SUCCESS:
            yield f"cuDeviceGet({ordinal}) failed ({err}): no CUDA device {ordinal} in this process"
            return
        err, ctx = drv.cuDevicePrimaryCtxRetain(dev)
        if err != drv.CUresult.CUDA_SUCCESS:
            yield f"cannot create a CUDA context on CUDA device {ordinal} ({err})"
            return
    except (OSError, RuntimeError) as exc:  # libcuda.so missing or broken
        yield f"the CUDA driver library could not be loaded ({exc})"
        return
    try:
        drv.cuCtxSetCurrent(ctx)
        yield _Driver(drv, ctx)
    finally:
        drv.cuDevicePrimaryCtxRelease(dev)
