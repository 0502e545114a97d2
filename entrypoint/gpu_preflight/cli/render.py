"""Human output with rich: tables for people; ``--json`` bypasses all of this."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gpu_preflight.memory.types import Estimate
from gpu_preflight.plan.tiers import TierTable
from gpu_preflight.plan.types import Plan
from gpu_preflight.profile_types import Profile

GIB = 2**30


def _gib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def _val(v: object) -> str:
    return "unknown" if v is None else str(v)


def render_profile(console: Console, profile: Profile) -> None:
    hw = profile.hardware
    title = "Machine profile" + (f" (simulated: {profile.simulated})" if profile.simulated else "")
    gpus = Table(title=title, title_justify="left")
    for col in ("GPU", "name", "total", "free", "CC", "PCIe", "MIG", "memory from"):
        gpus.add_column(col)
    for d in hw.gpus.devices:
        pcie = (
            f"gen{d.pcie_gen_current} x{d.pcie_width_current}"
            if d.pcie_gen_current and d.pcie_width_current
            else "unknown"
        )
        gpus.add_row(
            str(d.index),
            _val(d.name),
            _gib(d.total_bytes),
            _gib(d.free_bytes),
            _val(d.compute_capability),
            pcie,
            f"{len(d.mig_devices)} devices" if d.mig_enabled else "off",
            _val(d.memory_source),
        )
        for mig in d.mig_devices:
            gpus.add_row(
                f"  {d.index}:{mig.mig_index}",
                _val(mig.name),
                _gib(mig.total_bytes),
                _gib(mig.free_bytes),
                "",
                "",
                "leaf",
                _val(mig.memory_source),
            )
    for e in hw.gpus.errors:
        gpus.add_row(str(e.index), f"[red]error: {e.error}[/red]", "", "", "", "", "", "")
    if hw.gpus.devices or hw.gpus.errors:
        console.print(gpus)
    else:
        console.print(f"[bold]{title}[/bold]\nGPUs: none")
    m = hw.memory
    console.print(
        f"driver {_val(hw.gpus.driver_version)}, CUDA {_val(hw.gpus.cuda_driver_version)}; "
        f"host RAM {_gib(m.effective_total_bytes)} ({_gib(m.effective_available_bytes)} available"
        f"{', cgroup limit ' + _gib(m.cgroup_limit_bytes) if m.cgroup_limit_bytes else ''}); "
        f"CPU bandwidth {_val(m.cpu_memory_bandwidth_gb_s)} GB/s; "
        f"container {_val(hw.platform.in_container)}, WSL2 {_val(hw.platform.wsl2)}"
    )
    if hw.pinned.ceiling_bytes is not None:
        console.print(
            f"pinnable host memory: {_gib(hw.pinned.ceiling_bytes)}"
            f"{' (cap reached)' if hw.pinned.capped else ''}"
        )
    for p in hw.pcie.devices:
        console.print(
            f"PCIe GPU {p.index}: H2D {_val(p.host_to_device_gb_s)} GB/s, "
            f"D2H {_val(p.device_to_host_gb_s)} GB/s"
        )
    s = hw.storage
    if s.seq_read_mib_s is not None:
        console.print(
            f"storage {s.path} ({s.filesystem}): seq read {s.seq_read_mib_s:.0f} MiB/s, "
            f"4k random read {s.rand_read_4k_iops or 0:.0f} IOPS ({s.source})"
        )
    notes = [
        *hw.gpus.notes,
        *hw.platform.notes,
        *m.notes,
        *hw.pinned.notes,
        *hw.pcie.notes,
        *s.notes,
        *profile.notes,
    ]
    for d in hw.gpus.devices:
        notes += [f"GPU {d.index}: {n}" for n in d.notes]
    for n in notes:
        console.print(f"[dim]note:[/dim] {escape(n)}", soft_wrap=True)


# The notes that say whether an engine's own dry run checked a plan's figures (plan/reconcile.py,
# plan/reconcile_vllm.py): printed with the plan, not only in its JSON.
_ENGINE_CHECK_NOTES = ("llama.cpp's own dry run", "vLLM's own dry run", "vLLM's own KV pool")


def render_plan(
    console: Console, plan: Plan, argv: Sequence[str] | None = None, estimate: bool = False
) -> None:
    """``estimate``: the verdict is about the typed command ("fits" / "does not fit")."""
    if plan.verdict == "ship":
        assert plan.model is not None and plan.predicted is not None
        head = "[bold green]fits[/bold green]" if estimate else "[bold green]ship[/bold green]"
        console.print(
            f"{head} tier [bold]{plan.tier}[/bold] ({plan.tier_label}) on {', '.join(plan.targets)}"
        )
        console.print(
            escape(
                f"  {plan.engine}: {plan.model.name} [{plan.model.quant}] ({plan.model.path or plan.model.repo}"
                f"{'/' + plan.model.file if plan.model.file and not plan.model.path else ''}), context "
                f"{plan.context} tokens x {plan.parallel} parallel"
            ),
            soft_wrap=True,
        )
        if plan.draft is not None:
            dr = plan.draft
            console.print(
                escape(
                    f"  draft: {dr.id} [{dr.quant}] ({dr.path or dr.repo}"
                    f"{'/' + dr.file if dr.file and not dr.path else ''}), speculative decoding, "
                    f"{dr.tokens} tokens per step (included in the memory below)"
                ),
                soft_wrap=True,
            )
        t = Table(title="predicted memory", title_justify="left")
        for col in ("device", "weights", "KV cache", "compute", "overhead", "total", "budget"):
            t.add_column(col, justify="right" if col != "device" else "left")
        for d in plan.predicted.devices:
            t.add_row(
                d.device,
                _gib(d.weights_bytes),
                _gib(d.kv_cache_bytes),
                _gib(d.compute_bytes),
                _gib(d.overhead_bytes),
                _gib(d.total_bytes),
                _gib(d.budget_bytes),
            )
        console.print(t)
        p = plan.predicted
        extra = []
        if p.kv_capacity_tokens is not None:
            extra.append(f"KV capacity {p.kv_capacity_tokens} tokens")
        if p.max_concurrency is not None:
            extra.append(f"max concurrency {p.max_concurrency:.1f}x at {plan.context} tokens")
        cal = plan.calibration
        if p.decode_tok_s_low is not None:
            how = (
                f", calibrated from {cal.decode_receipts} receipt"
                f"{'s' if cal.decode_receipts != 1 else ''}"
                if cal is not None and cal.decode_receipts
                else ""
            )
            extra.append(
                f"decode forecast {p.decode_tok_s_low}-{p.decode_tok_s_high} tok/s (1 stream{how})"
            )
        extra.append(f"{p.kv_bytes_per_token} KV bytes/token")
        console.print("  " + "; ".join(extra))
        if cal is not None:
            # What earlier receipts said: the widened margin and the last receipt's figures.
            for n in p.notes:
                if n.startswith(("last receipt", "margin widened", "the receipt of")):
                    console.print(escape(f"  {n}"), soft_wrap=True)
        if estimate:
            # The command as typed: what the engine resolves for what it left open.
            for n in p.notes:
                if n.startswith(("llama-server 0.3.36 resolves", "VLLM_ALLOW_LONG_MAX_MODEL_LEN")):
                    console.print(escape(f"  {n}"), soft_wrap=True)
        # Whether the engine's own dry run checked these figures (plan/reconcile.py), and
        # where it raised one: the user sees what the numbers rest on.
        for n in p.notes:
            if n.startswith(_ENGINE_CHECK_NOTES):
                console.print(escape(f"  {n}"), soft_wrap=True)
        if plan.env:  # what the plan adds to the engine's environment (VLLM_PP_LAYER_PARTITION)
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items())
            console.print(escape(f"  env: {env}"), soft_wrap=True)
        console.print(
            escape("  argv: " + shlex.join(argv if argv is not None else plan.argv)), soft_wrap=True
        )
    else:
        head = "[bold red]does not fit[/bold red]" if estimate else "[bold red]refuse[/bold red]"
        console.print(f"{head} (tier {plan.tier}, on {', '.join(plan.targets)})")
        for r in plan.reasons:
            console.print(escape(f"  - {r}"), soft_wrap=True)
        if plan.alternatives:
            console.print("  what would fit instead:")
            for a in plan.alternatives:
                if a.argv:  # estimate: the typed command with one change
                    console.print(
                        escape(
                            f"  * [{a.kind}] {shlex.join(a.argv)}: {_gib(a.total_bytes)} of "
                            f"{_gib(a.budget_bytes)}"
                        ),
                        soft_wrap=True,
                    )
                    continue
                console.print(
                    escape(
                        f"  * [{a.kind}] {a.description}: {_gib(a.total_bytes)} of "
                        f"{_gib(a.budget_bytes)}"
                    ),
                    soft_wrap=True,
                )
    for w in plan.warnings:
        console.print(f"  [yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)


def render_estimate(console: Console, e: Estimate, title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("device", "weights", "KV cache", "compute", "overhead", "total"):
        t.add_column(col, justify="right" if col != "device" else "left")
    for d in e.devices:
        t.add_row(
            d.device,
            _gib(d.weights_bytes),
            _gib(d.kv_cache_bytes),
            _gib(d.compute_bytes),
            _gib(d.overhead_bytes),
            _gib(d.total_bytes),
        )
    console.print(t)
    line = f"KV bytes/token {e.kv_bytes_per_token}; context {e.context} x {e.parallel}"
    if e.kv_capacity_tokens is not None:
        line += f"; KV capacity {e.kv_capacity_tokens} tokens"
    if e.max_concurrency is not None:
        line += f"; max concurrency {e.max_concurrency:.2f}x"
    console.print(line)
    for n in e.notes:
        console.print(f"[dim]note:[/dim] {escape(n)}", soft_wrap=True)


def render_tiers(console: Console, tiers: TierTable) -> None:
    t = Table(title=f"tiers ({tiers.origin})", title_justify="left")
    for col in ("tier", "min usable VRAM", "label", "engines", "context", "parallel", "models"):
        t.add_column(col)
    for tier in tiers.tiers:
        t.add_row(
            tier.id,
            f"{tier.min_vram_gib:g} GiB" if tier.min_vram_gib else "no GPU",
            tier.label,
            ", ".join(tier.engines),
            f"{tier.target_context} (min {tier.min_context})",
            str(tier.parallel),
            "\n".join(tier.models),
        )
    console.print(t)
