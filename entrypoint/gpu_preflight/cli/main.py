"""gpu-preflight's command line. Commands are thin: parse, call the pipeline, print, map errors to exits.

Exit codes: 0 success / ship, 2 invalid input or setup problem, 3 refuse (nothing fits).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from gpu_preflight import __version__
from gpu_preflight.cli.options import (
    context_option,
    engine_option,
    host_bandwidth_option,
    host_ram_option,
    json_option,
    model_option,
    profile_option,
    simulate_option,
)
from gpu_preflight.plan.errors import InvalidInput, OverrideError, PreflightError
from gpu_preflight.plan.overrides import Overrides, parse_overrides
from gpu_preflight.serde import to_dict

EXIT_OK, EXIT_INVALID, EXIT_REFUSE = 0, 2, 3
GIB = 2**30

EPILOG = """\b
Examples:
  gpu-preflight probe                       what this machine has
  gpu-preflight plan --simulate rtx-4090    what would run on a 24 GB card
  gpu-preflight plan --simulate 2xa100-80gb --model llama-3.1-70b-instruct
  gpu-preflight estimate --model qwen3-8b --engine llama.cpp --context 32k --gpu rtx-4070
  gpu-preflight matrix --gpus rtx-3060,rtx-4090,h100-sxm
  gpu-preflight run --dry-run               plan, print the engine command, do not start it
"""


def _die(message: str, code: int = EXIT_INVALID) -> NoReturn:
    click.echo(f"gpu-preflight: error: {message}", err=True)
    sys.exit(code)


def _console() -> Any:
    from rich.console import Console

    return Console()


def _render() -> Any:
    # rich is only imported when a table is printed: --json stays fast.
    from gpu_preflight.cli import render

    return render


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpu-preflight")
def main() -> None:
    """Decide what LLM this GPU machine can serve, and how, before anything runs out of memory.

    The pipeline: probe the machine, write a profile, plan (engine, model, context, flags, predicted
    memory) or refuse with reasons, then become the inference server (`run`).
    """


# ------------------------------------------------------------------------------------------------
# probe / gpus


@main.command(
    epilog="\b\nExamples:\n  gpu-preflight probe --json --no-bench\n"
    "  gpu-preflight probe --simulate 4xl4 --json --out l4.json"
)
@json_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the profile JSON to this file (atomically).",
)
@click.option(
    "--bench/--no-bench",
    default=None,
    help="Run the fio storage pass on the bench dir (default: when /bench exists).",
)
@click.option(
    "--bench-dir",
    type=click.Path(path_type=Path),
    help="Directory for the fio pass (default: PREFLIGHT_BENCH_DIR or /bench).",
)
@simulate_option
@host_ram_option
@host_bandwidth_option
def probe(
    as_json: bool,
    out: Path | None,
    bench: bool | None,
    bench_dir: Path | None,
    simulate: str | None,
    host_ram: float | None,
    host_bandwidth: float | None,
) -> None:
    """Read the machine (GPUs, platform, host memory, pinned memory, PCIe, storage) and print the profile."""
    env = dict(os.environ)
    profile = _get_profile(
        env,
        simulate,
        host_ram,
        None,
        bench,
        bench_dir,
        cache_dir=out.parent if out else None,
        host_bandwidth=host_bandwidth,
    )
    from gpu_preflight.profile import profile_to_dict

    doc = profile_to_dict(profile)
    if out is not None:
        _write_out(out, doc)
    if as_json:
        _emit_json(doc)
    else:
        _render().render_profile(_console(), profile)


@main.command()
@json_option
def gpus(as_json: bool) -> None:
    """List the GPUs `--simulate` knows (real cards, with their public sources)."""
    from gpu_preflight.gpu_catalog import load_gpu_catalog

    catalog = load_gpu_catalog()
    if as_json:
        _emit_json([to_dict(g) for g in catalog.gpus])
        return
    from rich.table import Table

    t = Table(title="GPUs for --simulate", title_justify="left")
    for col in ("id", "name", "VRAM (NVML)", "bandwidth", "CC", "PCIe", "MIG profiles"):
        t.add_column(col)
    for g in catalog.gpus:
        t.add_row(
            g.id,
            g.nvml_name,
            f"{g.memory_total_mib} MiB",
            f"{g.memory_bandwidth_gb_s:g} GB/s",
            g.compute_capability,
            f"gen{g.pcie_gen} x{g.pcie_width}",
            ", ".join(m.name for m in g.mig_profiles) or "-",
        )
    _console().print(t)


# ------------------------------------------------------------------------------------------------
# plan / estimate / matrix / tiers


@main.command(name="plan", epilog=EPILOG)
@json_option
@simulate_option
@host_ram_option
@host_bandwidth_option
@profile_option
@model_option
@engine_option
@context_option
def plan_cmd(
    as_json: bool,
    simulate: str | None,
    host_ram: float | None,
    host_bandwidth: float | None,
    profile_path: str | None,
    model: str | None,
    engine: str | None,
    context: str | None,
) -> None:
    """Plan what to serve here (or on --simulate'd hardware). Exit 0 ship, 3 refuse, 2 bad input."""
    env = _with_cli_overrides(dict(os.environ), model=model, engine=engine, context=context)
    overrides = _overrides(env, ())
    profile = _get_profile(env, simulate, host_ram, profile_path, False, None, None, host_bandwidth)
    result = _plan(env, profile, overrides)
    if as_json:
        _emit_json(to_dict(result))
    else:
        _render().render_plan(_console(), result)
    sys.exit(EXIT_OK if result.verdict == "ship" else EXIT_REFUSE)


@main.command(
    epilog="\b\nExamples:\n"
    "  gpu-preflight estimate --model llama-3.1-8b-instruct --engine llama.cpp --context 8192 --cpu\n"
    "  gpu-preflight estimate --model ./model.gguf --engine llama.cpp --context 32k "
    "--cache-type q8_0 --gpu rtx-4090\n"
    "  gpu-preflight estimate --model qwen3-32b --engine vllm --context 16k --gpu h100-sxm --json"
)
@click.option(
    "--model",
    required=True,
    metavar="ID|HF_ID|PATH",
    help="Catalog id (id@QUANT for one "
    "artifact), Hugging Face id, or a path to a GGUF file / HF directory.",
)
@click.option("--engine", required=True, type=click.Choice(["vllm", "llama.cpp"]))
@click.option(
    "--context", required=True, metavar="TOKENS", help="Context per sequence (8192, 32k)."
)
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Sequences (llama.cpp -np / vLLM max-num-seqs).",
)
@click.option(
    "--cache-type",
    metavar="TYPE",
    help="KV cache type: llama.cpp f16, q8_0, q4_0, ...; vLLM auto or fp8.",
)
@click.option(
    "--flash-attn", type=click.Choice(["on", "off", "auto"]), default="on", show_default=True
)
@click.option(
    "--gpu", metavar="NAME", help="Place it on one simulated GPU (see `gpu-preflight gpus`)."
)
@click.option("--cpu", is_flag=True, help="llama.cpp on the CPU only (no layers offloaded).")
@click.option(
    "--gpu-memory-utilization",
    type=click.FloatRange(0.05, 1.0),
    default=0.9,
    show_default=True,
    help="vLLM: the fraction of the GPU's total memory it may use.",
)
@json_option
def estimate(
    model: str,
    engine: str,
    context: str,
    parallel: int,
    cache_type: str | None,
    flash_attn: str,
    gpu: str | None,
    cpu: bool,
    gpu_memory_utilization: float,
    as_json: bool,
) -> None:
    """The memory breakdown for exactly one configuration: no selection, no fitting."""
    from gpu_preflight.cli.estimate_cmd import run_estimate

    if cpu and gpu:
        _die("--cpu and --gpu exclude each other: pick one placement")
    if not cpu and not gpu:
        _die("say where: --gpu NAME (see `gpu-preflight gpus`) or --cpu")
    try:
        e, title = run_estimate(
            model,
            engine,
            context,
            parallel,
            cache_type,
            flash_attn,
            gpu,
            cpu,
            gpu_memory_utilization,
        )
    except PreflightError as exc:
        _die(str(exc), exc.exit_code)
    except ValueError as exc:
        _die(str(exc))
    if as_json:
        _emit_json(to_dict(e))
    else:
        _render().render_estimate(_console(), e, title)


@main.command(
    epilog="\b\nExample:\n  gpu-preflight matrix --gpus rtx-3060,rtx-4090,a100-80gb "
    "--models qwen3-8b,qwen3-32b,llama-3.1-70b-instruct"
)
@click.option(
    "--gpus", "gpu_list", metavar="A,B,...", help="GPUs to simulate (default: every GPU)."
)
@click.option(
    "--models", "model_list", metavar="X,Y,...", help="Models (default: every tier model)."
)
@click.option(
    "--context", metavar="TOKENS", help="Pin the context (default: the largest that fits)."
)
@host_ram_option
@json_option
def matrix(
    gpu_list: str | None,
    model_list: str | None,
    context: str | None,
    host_ram: float | None,
    as_json: bool,
) -> None:
    """A model x GPU table: verdict, engine and the largest context that fits."""
    from gpu_preflight.cli.matrix_cmd import render_matrix, run_matrix

    try:
        rows = run_matrix(dict(os.environ), gpu_list, model_list, context, host_ram)
    except PreflightError as exc:
        _die(str(exc), exc.exit_code)
    except ValueError as exc:
        _die(str(exc))
    if as_json:
        _emit_json([to_dict(r) for r in rows])
    else:
        render_matrix(_console(), rows)


@main.command()
@json_option
def tiers(as_json: bool) -> None:
    """Print the tier table (built in, or PREFLIGHT_TIERS_FILE): what each VRAM size gets."""
    from gpu_preflight.plan.tiers import load_tiers

    try:
        table = load_tiers(os.environ)
    except PreflightError as exc:
        _die(str(exc), exc.exit_code)
    if as_json:
        _emit_json(
            {
                "schema_version": 1,
                "origin": table.origin,
                "tiers": [to_dict(t) for t in table.tiers],
            }
        )
    else:
        _render().render_tiers(_console(), table)


# ------------------------------------------------------------------------------------------------
# run


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="\b\nExamples:\n  gpu-preflight run --dry-run\n"
    "  gpu-preflight run -- --api-key-file /run/secrets/key   (engine args after --)\n"
    "\b\nEnvironment: PREFLIGHT_MODEL, PREFLIGHT_ENGINE, PREFLIGHT_CONTEXT, PREFLIGHT_TIER,\n"
    "PREFLIGHT_KV_CACHE_TYPE, PREFLIGHT_RESERVE_GB, PREFLIGHT_MIN_TOKS, PREFLIGHT_PARALLEL,\n"
    "PREFLIGHT_SPECULATIVE (auto|on|off),\n"
    "PREFLIGHT_BENCH (auto|on|off|force), PREFLIGHT_BENCH_DIR, PREFLIGHT_PROFILE_DIR,\n"
    "PREFLIGHT_DRY_RUN, PREFLIGHT_PORT, PREFLIGHT_HOST, VLLM_MODEL, VLLM_QUANTIZATION,\n"
    "VLLM_MAX_MODEL_LEN, LLAMA_ARG_*; see docs/configuration.md.",
)
@click.option("--dry-run", is_flag=True, help="Plan and print the engine command; do not start it.")
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def run(dry_run: bool, engine_args: tuple[str, ...]) -> None:
    """Probe, plan, write profile.json and plan.json, then become the engine (or exit 3 refusing)."""
    from gpu_preflight.cli.run_cmd import run_preflight

    args = list(engine_args)
    if args and args[0] == "--":
        args = args[1:]
    code = run_preflight(dict(os.environ), tuple(args), dry_run)
    sys.exit(code)


# ------------------------------------------------------------------------------------------------
# shared plumbing


_CLI_VARS = {
    "model": ("PREFLIGHT_MODEL", "--model"),
    "engine": ("PREFLIGHT_ENGINE", "--engine"),
    "context": ("PREFLIGHT_CONTEXT", "--context"),
}


def _with_cli_overrides(env: dict[str, str], **values: str | None) -> dict[str, str]:
    for key, value in values.items():
        if value is not None:
            var = _CLI_VARS[key][0]
            env[var] = value
            env[f"_CLI_{var}"] = _CLI_VARS[key][1]
            if key == "model":
                env.pop("VLLM_MODEL", None)  # the option wins over the image's variable
    return env


def _as_typed(message: str, env: Mapping[str, str]) -> str:
    """Name the option the user typed (--context) instead of the variable it was mapped to."""
    for var, option in _CLI_VARS.values():
        if f"_CLI_{var}" in env:
            message = message.replace(f"{var}=", f"{option}=")
    return message


def _overrides(env: Mapping[str, str], engine_argv: tuple[str, ...]) -> Overrides:
    try:
        return parse_overrides(env, engine_argv)
    except OverrideError as exc:
        _die(_as_typed(str(exc), env), exc.exit_code)


def _write_out(path: Path, doc: Any) -> None:
    from gpu_preflight.launch import write_json_atomic

    try:
        write_json_atomic(path, doc)
    except OSError as exc:
        _die(f"--out {path}: cannot write it ({exc.strerror or exc})")


def _get_profile(
    env: Mapping[str, str],
    simulate: str | None,
    host_ram: float | None,
    profile_path: str | None,
    bench: bool | None,
    bench_dir: Path | None,
    cache_dir: Path | None,
    host_bandwidth: float | None = None,
) -> Any:
    from gpu_preflight.profile import ProfileError, make_profile, read_profile

    if profile_path and simulate:
        _die(
            "--profile and --simulate exclude each other: plan from a saved profile or a simulation"
        )
    if profile_path:
        try:
            return read_profile(Path(profile_path))
        except ProfileError as exc:
            _die(f"--profile: {exc}")
    if simulate:
        from gpu_preflight.probe.collect import simulated_hardware

        try:
            hw = simulated_hardware(
                simulate, int(host_ram * GIB) if host_ram else None, host_bandwidth
            )
        except ValueError as exc:
            _die(f"--simulate {simulate!r}: {exc}")
        return make_profile(hw, simulated=simulate)
    from gpu_preflight.cli.probe_opts import probe_options
    from gpu_preflight.probe.collect import collect_hardware

    try:
        opts = probe_options(env, bench, bench_dir, cache_dir)
        hw = collect_hardware(env, opts)
    except InvalidInput as exc:
        _die(str(exc), exc.exit_code)
    except ValueError as exc:  # malformed NVIDIA_VISIBLE_DEVICES and other bad environment
        _die(str(exc))
    return make_profile(hw)


def _plan(env: Mapping[str, str], profile: Any, overrides: Overrides) -> Any:
    from gpu_preflight.cli.run_cmd import plan_for

    try:
        return plan_for(env, profile, overrides, engines_available=("vllm", "llama.cpp"))
    except PreflightError as exc:
        _die(_as_typed(str(exc), env), exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
