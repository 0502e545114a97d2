"""The GPU probe: every visible NVIDIA GPU through NVML, nvidia-smi as the fallback.

Returns a GpuReport and never raises, except ``VisibleDevicesError`` for a malformed
``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` (bad user input, exit 2). Failure levels:
- fatal (no library, no driver, library/driver mismatch): no devices, a note saying what to do;
- per device (GPU lost, fallen off the bus): a GpuError entry, the other GPUs still report;
- per field (NotSupported): that field is None and the device's notes say which and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from gpu_preflight.gpu_catalog import GpuCatalog, load_gpu_catalog
from gpu_preflight.probe.command import CommandResult, run_command, which
from gpu_preflight.probe.nvml import (
    LIBRARY_NOT_FOUND,
    NvmlFailure,
    NvmlSession,
    as_text,
    load_pynvml,
    nvml_session,
)
from gpu_preflight.probe.smi import probe_with_smi
from gpu_preflight.probe.visible import (
    DeviceKey,
    Numbered,
    apply,
    cuda_index_order,
    cuda_numbering,
    selections,
)
from gpu_preflight.profile_types import GpuDevice, GpuError, GpuReport, MigDevice, Source

Runner = Callable[[list[str], float], CommandResult]
_LOST = ("NVMLError_GpuIsLost", "NVMLError_Unknown", "NVMLError_Uninitialized")


def _cuda_version(raw: Any) -> str | None:
    if not isinstance(raw, int) or raw <= 0:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


class _DeviceLost(Exception):
    pass


def _field(s: NvmlSession, notes: list[str], what: str, func: Any, *args: Any) -> Any:
    """One optional field: NotSupported -> None + note; GPU lost -> abort this device."""
    try:
        return func(*args)
    except s.lib.NVMLError as exc:
        if any(
            isinstance(exc, getattr(s.lib, n, ()))
            for n in _LOST
            if isinstance(getattr(s.lib, n, None), type)
        ):
            raise _DeviceLost(f"{what}: {s.error_text(exc)}") from exc
        reason = (
            "not supported on this GPU/driver" if s.is_not_supported(exc) else s.error_text(exc)
        )
        notes.append(f"{what} unknown: {reason}")
        return None


def _memory(s: NvmlSession, handle: Any, notes: list[str], label: str) -> tuple[Any, Source | None]:
    before = len(s.errors)
    info, source = s.memory_info(handle)
    notes += [f"{label}: {e}" for e in s.errors[before:]]
    if info is None:
        return None, None
    if not getattr(info, "total", 0):
        # Unified-memory parts (Grace Hopper in some modes, Jetson) report 0: VRAM is host RAM.
        notes.append(
            f"{label}: NVML reports total 0 (unified memory): VRAM size unknown, plan on host RAM"
        )
        return None, None
    return info, source  # type: ignore[return-value]


def _mig_devices(
    s: NvmlSession, handle: Any, index: int, notes: list[str]
) -> tuple[MigDevice, ...]:
    lib = s.lib
    count = (
        _field(s, notes, "max MIG device count", lib.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    )
    out = []
    for j in range(int(count)):
        try:
            mh = lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except lib.NVMLError:
            break  # MIG slots are filled from 0: the first missing one ends the list
        mnotes: list[str] = []
        info, src = _memory(s, mh, mnotes, f"MIG {j} memory")
        out.append(
            MigDevice(
                uuid=as_text(_field(s, mnotes, "MIG UUID", lib.nvmlDeviceGetUUID, mh)),
                name=as_text(_field(s, mnotes, "MIG name", lib.nvmlDeviceGetName, mh)),
                parent_index=index,
                mig_index=j,
                gpu_instance_id=_field(
                    s, mnotes, "GPU instance id", lib.nvmlDeviceGetGpuInstanceId, mh
                ),
                compute_instance_id=_field(
                    s, mnotes, "compute instance id", lib.nvmlDeviceGetComputeInstanceId, mh
                ),
                total_bytes=int(info.total) if info else None,
                free_bytes=int(info.free) if info else None,
                used_bytes=int(info.used) if info else None,
                memory_source=src,
                notes=tuple(mnotes),
            )
        )
    return tuple(out)


def _read_device(s: NvmlSession, i: int, catalog: GpuCatalog) -> GpuDevice | GpuError:
    lib = s.lib
    notes: list[str] = []
    try:
        handle = lib.nvmlDeviceGetHandleByIndex(i)
    except lib.NVMLError as exc:
        return GpuError(index=i, error=f"cannot open GPU {i}: {s.error_text(exc)}")
    uuid = None
    try:
        uuid = as_text(_field(s, notes, "UUID", lib.nvmlDeviceGetUUID, handle))
        name = as_text(_field(s, notes, "name", lib.nvmlDeviceGetName, handle))
        info, source = _memory(s, handle, notes, "memory")
        cc = _field(s, notes, "compute capability", lib.nvmlDeviceGetCudaComputeCapability, handle)
        gen_cur = _field(
            s, notes, "PCIe generation", lib.nvmlDeviceGetCurrPcieLinkGeneration, handle
        )
        gen_max = _field(
            s, notes, "PCIe max generation", lib.nvmlDeviceGetMaxPcieLinkGeneration, handle
        )
        w_cur = _field(s, notes, "PCIe width", lib.nvmlDeviceGetCurrPcieLinkWidth, handle)
        w_max = _field(s, notes, "PCIe max width", lib.nvmlDeviceGetMaxPcieLinkWidth, handle)
        power = _field(s, notes, "power limit", lib.nvmlDeviceGetPowerManagementLimit, handle)
        mig_mode = _field(s, notes, "MIG mode", lib.nvmlDeviceGetMigMode, handle)
        mig_on = None if mig_mode is None else bool(mig_mode[0])
        migs = _mig_devices(s, handle, i, notes) if mig_on else ()
    except _DeviceLost as lost:
        return GpuError(
            index=i,
            error=f"GPU {i} stopped answering ({lost}): lost or fallen off the bus",
            uuid=uuid,
        )
    if mig_mode is None and any("MIG mode unknown: not supported" in n for n in notes):
        notes = [n for n in notes if "MIG mode unknown" not in n]
        mig_on = False  # a card without MIG answers NotSupported: that is a "no", not an unknown
    entry = catalog.by_nvml_name(name) if name else None
    return GpuDevice(
        index=i,
        uuid=uuid,
        name=name,
        total_bytes=int(info.total) if info else None,
        free_bytes=int(info.free) if info else None,
        used_bytes=int(info.used) if info else None,
        reserved_bytes=int(info.reserved) if getattr(info, "reserved", None) is not None else None,
        memory_source=source,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        pcie_gen_current=gen_cur,
        pcie_gen_max=gen_max,
        pcie_width_current=w_cur,
        pcie_width_max=w_max,
        power_limit_watts=round(power / 1000.0, 1) if isinstance(power, int) else None,
        mig_enabled=mig_on,
        mig_devices=migs,
        memory_bandwidth_gb_s=entry.memory_bandwidth_gb_s if entry else None,
        memory_bandwidth_source="catalog" if entry else None,
        notes=tuple(notes)
        + (
            ()
            if entry or not name
            else (f"{name} is not in the GPU catalog: memory bandwidth unknown",)
        ),
    )


Slot = GpuDevice | GpuError


def _key(position: int, slot: Slot) -> DeviceKey:
    if isinstance(slot, GpuError):
        return DeviceKey(position, slot.uuid, ())
    return DeviceKey(
        position,
        slot.uuid,
        tuple(m.uuid or "" for m in slot.mig_devices),
        mig_enabled=bool(slot.mig_enabled),
    )


def _select(
    env: Mapping[str, str], slots: list[Slot]
) -> tuple[list[tuple[Slot, str | None]], list[str]]:
    """Apply the visible-devices variables in turn to the NVML list (lost GPUs included)."""
    notes: list[str] = []
    kept: list[tuple[Slot, str | None]] = [(s, None) for s in slots]
    for sel in selections(env):  # raises VisibleDevicesError on a malformed value
        current = [s for s, _ in kept]
        keys = [_key(p, s) for p, s in enumerate(current)]
        picks = apply(sel, keys)
        kept = [(current[p.position], p.mig_uuid) for p in picks]
        if len(kept) != len(current) or sel.kind != "all":
            notes.append(
                f"{sel.variable}={sel.raw!r}: {len(kept)} of {len(current)} GPU(s) selected"
            )
        order = cuda_index_order(keys)
        if (
            sel.variable == "CUDA_VISIBLE_DEVICES"
            and any(e.isdigit() for e in sel.entries)
            and [k.position for k in order] != list(range(len(keys)))
        ):
            shown = ", ".join(f"{i} = GPU {current[k.position].index}" for i, k in enumerate(order))
            notes.append(
                "CUDA counts MIG-enabled GPUs after the others when it reads an index in "
                f"CUDA_VISIBLE_DEVICES: {shown}"
            )
    return kept, notes


def _number(
    kept: list[tuple[Slot, str | None]],
) -> tuple[list[GpuDevice], list[GpuError], list[Numbered]]:
    """Give every kept device the CUDA ordinal the engine process will see it under."""
    numbered = cuda_numbering([(_key(i, s), m) for i, (s, m) in enumerate(kept)])
    devices: list[GpuDevice] = []
    errors: list[GpuError] = []
    for n in numbered:
        slot, named_mig = kept[n.position]
        if isinstance(slot, GpuError):
            errors.append(dataclasses.replace(slot, cuda_ordinal=n.ordinal))
            continue
        migs = slot.mig_devices
        if named_mig is not None:  # the selection named one MIG device: only it is visible
            migs = tuple(m for m in migs if m.uuid == named_mig)
        # The leaf CUDA shows is the first one with that UUID ("" stands for an unreadable one).
        leaf = next((j for j, m in enumerate(migs) if (m.uuid or "") == n.mig_uuid), None)
        migs = tuple(
            dataclasses.replace(m, cuda_ordinal=n.ordinal if j == leaf else None)
            for j, m in enumerate(migs)
        )
        # With MIG on, the GPU itself is not a CUDA device: its visible leaf carries the ordinal.
        whole = None if n.mig_uuid is not None or slot.mig_enabled else n.ordinal
        devices.append(dataclasses.replace(slot, mig_devices=migs, cuda_ordinal=whole))
    return devices, errors, numbered


def _mapping_note(kept: list[tuple[Slot, str | None]], numbered: list[Numbered]) -> list[str]:
    shown = ", ".join(
        f"GPU {kept[n.position][0].index}"
        + (f" MIG {n.mig_uuid or '(UUID unknown)'}" if n.mig_uuid is not None else "")
        + f" = CUDA{n.ordinal}"
        + (" (answered an error)" if isinstance(kept[n.position][0], GpuError) else "")
        for n in numbered
        if n.ordinal is not None
    )
    return [f"CUDA numbering in this process: {shown}"] if shown else []


def _mig_note(
    kept: list[tuple[Slot, str | None]], numbered: list[Numbered], devices: list[GpuDevice]
) -> list[str]:
    leaf = next((n for n in numbered if n.mig_uuid is not None), None)
    if leaf is None:
        return []
    parent = kept[leaf.position][0].index
    hidden = [f"GPU {kept[n.position][0].index}" for n in numbered if n is not leaf]
    others = [
        m for d in devices if d.index == parent for m in d.mig_devices if m.cuda_ordinal is None
    ]
    if not hidden and not others:
        return []
    return [
        "CUDA enumerates one MIG device per process and then no other GPU: only "
        f"{leaf.mig_uuid} (on GPU {parent}) is CUDA0"
        + (f"; {', '.join(hidden)} not visible to CUDA" if hidden else "")
        + (
            f"; the other {len(others)} MIG device(s) on GPU {parent} are used only by naming "
            "their MIG- UUID in CUDA_VISIBLE_DEVICES"
            if others
            else ""
        )
    ]


def _error_notes(listed: bool, devices: list[GpuDevice], errors: list[GpuError]) -> list[str]:
    """A GPU that answered an error but holds a CUDA number: say so, and how to avoid it."""
    usable = [d.uuid for d in devices if d.cuda_ordinal is not None and d.uuid]
    hint = (
        f"; to use only working GPUs, list them by UUID (CUDA_VISIBLE_DEVICES={','.join(usable)}):"
        " a UUID names the same GPU whether or not CUDA still counts the failed one"
        if usable
        else ""
    )
    notes = []
    for e in errors:
        if e.cuda_ordinal is None:
            continue
        after = [
            d for d in devices if d.cuda_ordinal is not None and d.cuda_ordinal > e.cuda_ordinal
        ]
        if listed:
            notes.append(
                f"GPU {e.index} is selected by CUDA_VISIBLE_DEVICES but answered an error: it "
                f"takes CUDA{e.cuda_ordinal} and no engine can use it" + hint
            )
        elif after:
            notes.append(
                f"GPU {e.index} answered an error but keeps its place in CUDA's numbering "
                f"(CUDA{e.cuda_ordinal}): the GPUs after it are numbered from "
                f"CUDA{e.cuda_ordinal + 1}" + hint
            )
    return notes


def _order_note(env: Mapping[str, str], devices: list[GpuDevice]) -> list[str]:
    visible = {d.name for d in devices if d.cuda_ordinal is not None}
    if len(visible) < 2 or env.get("CUDA_DEVICE_ORDER", "").strip().upper() == "PCI_BUS_ID":
        return []
    return [
        "CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA may number these different GPUs fastest "
        "first, not in nvidia-smi's bus order that the CUDA ordinals here assume; set "
        "CUDA_DEVICE_ORDER=PCI_BUS_ID (or select GPUs by UUID)"
    ]


def _filter(
    env: Mapping[str, str], devices: list[GpuDevice], errors: list[GpuError]
) -> tuple[list[GpuDevice], list[GpuError], list[str]]:
    """The GPUs this process's CUDA will see, in its order, each with its CUDA ordinal.

    Selection runs over every GPU NVML counts, in NVML index order, the ones that answered an
    error included, so an index means nvidia-smi's GPU of that number (probe/visible.py)."""
    slots: list[Slot] = sorted([*devices, *errors], key=lambda s: s.index)
    kept, notes = _select(env, slots)
    devices, errors, numbered = _number(kept)
    sels = selections(env)
    if any(sel.kind != "all" for sel in sels):
        notes += _mapping_note(kept, numbered)
    notes += _mig_note(kept, numbered, devices)
    listed = any(sel.variable == "CUDA_VISIBLE_DEVICES" and sel.kind == "list" for sel in sels)
    notes += _error_notes(listed, devices, errors)
    notes += _order_note(env, devices)
    return devices, errors, notes


def probe_gpus(
    env: Mapping[str, str],
    lib: Any = None,
    smi_runner: Runner | None = None,
    catalog: GpuCatalog | None = None,
) -> GpuReport:
    catalog = catalog or load_gpu_catalog()
    visible = env.get("CUDA_VISIBLE_DEVICES", env.get("NVIDIA_VISIBLE_DEVICES"))
    simulated = bool(getattr(lib, "SIMULATED", False))
    if lib is None:
        loaded = load_pynvml()
        if isinstance(loaded, str):
            return _fallback(
                env, NvmlFailure(LIBRARY_NOT_FOUND, loaded), smi_runner, catalog, visible
            )
        lib = loaded
    with nvml_session(lib) as s:
        if isinstance(s, NvmlFailure):
            return _fallback(env, s, smi_runner if not simulated else None, catalog, visible)
        driver = as_text(s.query("driver version", lib.nvmlSystemGetDriverVersion))
        cuda = _cuda_version(s.query("CUDA driver version", lib.nvmlSystemGetCudaDriverVersion))
        count = s.query("device count", lib.nvmlDeviceGetCount, default=0)
        devices: list[GpuDevice] = []
        errors: list[GpuError] = []
        for i in range(int(count)):
            try:
                d = _read_device(s, i, catalog)
            except Exception as exc:  # a driver answer we do not understand must not stop the run
                d = GpuError(
                    index=i, error=f"unexpected answer from NVML: {type(exc).__name__}: {exc}"
                )
            (errors if isinstance(d, GpuError) else devices).append(d)  # type: ignore[arg-type]
        notes = [e for e in s.errors if e.startswith(("driver", "CUDA", "device count"))]
    devices, errors, vis_notes = _filter(env, devices, errors)
    notes += vis_notes
    if not devices:
        if not vis_notes and not errors:
            notes.append("NVML is working but reports no visible GPU")
        elif any(sel.kind != "all" for sel in selections(env)):
            notes.append("no usable GPU left after the visible-devices selection")
    return GpuReport(
        devices=tuple(devices),
        errors=tuple(errors),
        driver_version=driver,
        cuda_driver_version=cuda,
        source="simulated" if simulated else "nvml",
        visible_devices=visible,
        notes=tuple(notes),
    )


def _fallback(
    env: Mapping[str, str],
    failure: NvmlFailure,
    smi_runner: Runner | None,
    catalog: GpuCatalog,
    visible: str | None,
) -> GpuReport:
    """NVML could not start: use nvidia-smi if it exists and the library was the problem."""
    runner = smi_runner or (run_command if which("nvidia-smi") else None)
    if failure.kind == LIBRARY_NOT_FOUND and runner is not None:
        report = probe_with_smi(runner, catalog)
        if report.devices or report.errors:
            devices, errors, vis_notes = _filter(env, list(report.devices), list(report.errors))
            return dataclasses.replace(
                report,
                devices=tuple(devices),
                errors=tuple(errors),
                visible_devices=visible,
                notes=(
                    f"NVML unavailable ({failure.message}); read through nvidia-smi instead",
                    *report.notes,
                    *vis_notes,
                ),
            )
        notes = (failure.message, *report.notes)
    else:
        notes = (failure.message,)
    _ = selections(env)  # still reject a malformed selection even when there is no GPU
    return GpuReport((), (), None, None, None, visible, notes)
