"""Pinned-memory and PCIe probes against a fake CUDA device (the hardware edge), and without CUDA."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from tests.conftest import scenario

from gpu_preflight.probe.gpu import probe_gpus
from gpu_preflight.probe.pcie import probe_pcie
from gpu_preflight.probe.pinned import probe_pinned

MIB = 2**20


class FakeCuda:
    """Page-locks until `limit` bytes are held, like cuMemHostAlloc refusing past the ceiling."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.next = limit, {}, 1
        self.copies: list[tuple[str, int]] = []

    def host_alloc(self, n):
        if sum(self.held.values()) + n > self.limit:
            return None
        self.next += 1
        self.held[self.next] = n
        return self.next

    def host_free(self, p):
        del self.held[p]

    def device_alloc(self, n):
        return self.host_alloc(n)

    def device_free(self, p):
        self.host_free(p)

    def copy_h2d(self, d, s, n):
        self.copies.append(("h2d", n))

    def copy_d2h(self, d, s, n):
        self.copies.append(("d2h", n))


def opener_for(cuda):
    @contextmanager
    def opener(index):
        yield cuda

    return opener


def test_pinned_ceiling_found_and_everything_freed():
    cuda = FakeCuda(limit=1000 * MIB)
    r = probe_pinned(cap_bytes=4096 * MIB, chunk_bytes=256 * MIB, opener=opener_for(cuda))
    assert r.ceiling_bytes == 768 * MIB and r.capped is False and r.source == "cuda-driver"
    assert cuda.held == {}


def test_pinned_cap_stops_first_and_says_so():
    cuda = FakeCuda(limit=10**12)
    r = probe_pinned(cap_bytes=1024 * MIB, chunk_bytes=256 * MIB, opener=opener_for(cuda))
    assert r.ceiling_bytes == 1024 * MIB and r.capped is True
    assert any("cap" in n for n in r.notes)
    assert cuda.held == {}


def test_pinned_frees_even_when_the_driver_raises():
    class Exploding(FakeCuda):
        def host_alloc(self, n):
            if len(self.held) == 2:
                raise RuntimeError("driver crashed")
            return super().host_alloc(n)

    cuda = Exploding(limit=10**12)
    with pytest.raises(RuntimeError):
        probe_pinned(cap_bytes=4096 * MIB, chunk_bytes=256 * MIB, opener=opener_for(cuda))
    assert cuda.held == {}


def test_without_cuda_both_probes_say_why():
    @contextmanager
    def none(index):
        yield "the CUDA driver binding is not installed"

    p = probe_pinned(cap_bytes=MIB, opener=none)
    assert p.ceiling_bytes is None and "not installed" in p.notes[0]
    r = probe_pcie(probe_gpus({}, lib=scenario("rtx4090")).devices, opener=none)
    assert r.source is None and r.devices[0].host_to_device_gb_s is None


def test_pcie_measures_each_direction_separately():
    cuda = FakeCuda(limit=10**12)
    gpus = probe_gpus({}, lib=scenario("2x_a100_80gb")).devices
    r = probe_pcie(gpus, bytes_per_copy=64 * MIB, opener=opener_for(cuda))
    assert [d.index for d in r.devices] == [0, 1] and r.source == "cuda-driver"
    assert [d.cuda_ordinal for d in r.devices] == [0, 1]
    assert all(d.host_to_device_gb_s and d.device_to_host_gb_s for d in r.devices)
    assert [c[0] for c in cuda.copies].count("h2d") == 6 and cuda.held == {}


def test_real_cuda_absent_here_is_a_value_not_an_exception():
    p = probe_pinned(cap_bytes=256 * MIB)
    assert p.ceiling_bytes is None and p.notes
