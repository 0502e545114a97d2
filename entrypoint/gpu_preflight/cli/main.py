"""gpu-preflight's command line. Commands are thin: parse, call the pipeline, print, map errors to exits.

Exit codes: 0 success / ship, 2 invalid input or setup problem, 3 refuse (nothing fits).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Mapping, Sequence
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
from gpu_preflight.inputs.errors import InvalidInput, PreflightError
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


class _Commands(click.Group):
    """Every command's errors become one clear line and an exit code: never a traceback.

    InvalidInput and setup errors exit 2, a refusal 3 (the commands return it), and anything else
    is a bug, said as one.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["gpu_preflight.argv"] = tuple(args)  # for the secrets typed on the command line
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        # Every line a command prints (click.echo, rich tables, --json, errors) passes through a
        # stream that masks the run's secret values (inputs/secrets.py), wherever they were typed.
        from gpu_preflight.inputs.secrets import MaskingStream, secret_values

        secrets = secret_values(os.environ, ctx.meta.get("gpu_preflight.argv", ()))
        if not secrets:
            return self._invoke(ctx, secrets)
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = MaskingStream(out, secrets), MaskingStream(err, secrets)
        try:
            return self._invoke(ctx, secrets)
        except click.ClickException as exc:  # a usage error is shown here, while still masked
            exc.show()
            raise click.exceptions.Exit(exc.exit_code) from None
        finally:  # the wrapper keeps no buffer: entry()'s flush still reports a full stdout
            sys.stdout, sys.stderr = out, err

    def _invoke(self, ctx: click.Context, secrets: Sequence[str]) -> Any:
        from gpu_preflight.inputs.secrets import mask

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except PreflightError as exc:
            click.echo(f"gpu-preflight: error: {mask(str(exc), secrets)}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(
                f"gpu-preflight: error: cannot write{where}: {exc.strerror or exc}", err=True
            )
            ctx.exit(EXIT_INVALID)
        except Exception as exc:  # a bug: say so plainly
            if os.environ.get("PREFLIGHT_DEBUG"):
                raise
            click.echo(
                f"gpu-preflight: internal error: {type(exc).__name__}: "
                f"{mask(str(exc), secrets)[:300]}. This is a bug in gpu-preflight; please report it "
                "with the command you ran (PREFLIGHT_DEBUG=1 shows the traceback).",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Commands, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
    env = dict(os.environ)
    inputs = _inputs(env, (), {"--model": model, "--engine": engine, "--context": context})
    profile = _get_profile(env, simulate, host_ram, profile_path, False, None, None, host_bandwidth)
    from gpu_preflight import pipeline

    # llama.cpp's own dry run of the planned command on this machine's CPU (weights and KV)
    result = pipeline.check_on_cpu(inputs, _plan(inputs, profile), env)
    if as_json:
        _emit_json(to_dict(result))
    else:
        _render().render_plan(_console(), result)
    sys.exit(EXIT_OK if result.verdict == "ship" else EXIT_REFUSE)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="\b\nExamples:\n"
    "  gpu-preflight estimate --gpu 2xrtx-3090 -- llama-server -m X.gguf -c 16384 -np 2 \\\n"
    "      -ngl 60 -ncmoe 8 -ts 3,2 -ub 1024 -ctk q8_0\n"
    "  gpu-preflight estimate --gpu 4xh100-sxm -- vllm serve ORG/REPO -tp 4 \\\n"
    "      --max-model-len 32768 --gpu-memory-utilization 0.9\n"
    "  gpu-preflight estimate --model qwen3-8b --engine llama.cpp --context 32k --gpu rtx-4070\n"
    "  gpu-preflight estimate --model ./model.gguf --context 8192 --cpu --json",
)
@click.option(
    "--gpu",
    metavar="DEVICES",
    help="The devices: NAME (rtx-4090), NxNAME (2xrtx-3090), mixed cards (rtx-4090,rtx-3060), "
    "NAME:MIG (a100-80gb:1g.10gb) or a recorded NVML scenario file (see `gpu-preflight gpus`).",
)
@click.option("--cpu", is_flag=True, help="No GPU: llama.cpp on the CPU and host RAM.")
@click.option("--model", metavar="ID|REPO|PATH", help="Model, when no engine command names one.")
@click.option(
    "--engine", type=click.Choice(["vllm", "llama.cpp"]), help="Engine (when no command)."
)
@click.option("--context", metavar="TOKENS", help="Context per sequence (8192, 32k).")
@click.option("--parallel", metavar="N", help="Sequences at once (default: 1).")
@click.option("--cache-type", metavar="TYPE", help="KV cache type: f16, q8_0, q4_0, ...; vLLM fp8.")
@click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), help="llama.cpp.")
@click.option("--gpu-memory-utilization", metavar="F", help="vLLM's budget fraction.")
@host_ram_option
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def estimate(
    gpu: str | None,
    cpu: bool,
    model: str | None,
    engine: str | None,
    context: str | None,
    parallel: str | None,
    cache_type: str | None,
    flash_attn: str | None,
    gpu_memory_utilization: str | None,
    host_ram: float | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Will exactly this command fit on these devices? The per-device breakdown.

    Give the engine command after `--` (llama-server ... or vllm serve ...), read with the same
    flag table `run` uses, or describe one configuration with the options. The command is
    planned as typed: what it leaves open is the engine's own default (vLLM 0.32; llama-server
    0.3.36, whose own --fit lowers an unset -c), and "does not fit" comes with the shortfall per
    device and the nearest commands that fit. Exit 0 fits, 3 does not, 2 bad input.
    """
    from gpu_preflight.cli.estimate_cmd import run_estimate

    if cpu and gpu:
        _die("--cpu and --gpu exclude each other: pick one placement")
    if not cpu and not gpu:
        _die("say where: --gpu DEVICES (see `gpu-preflight gpus`) or --cpu")
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    options = {
        "--model": model,
        "--engine": engine,
        "--context": context,
        "--parallel": parallel,
        "--cache-type": cache_type,
        "--flash-attn": flash_attn,
        "--gpu-memory-utilization": gpu_memory_utilization,
    }
    result = run_estimate(dict(os.environ), options, tuple(args), gpu, cpu, host_ram)
    if as_json:
        _emit_json(to_dict(result))
    else:
        _render().render_plan(_console(), result, estimate=True)
    sys.exit(EXIT_OK if result.verdict == "ship" else EXIT_REFUSE)


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

    rows = run_matrix(dict(os.environ), gpu_list, model_list, context, host_ram)
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


@main.command(
    epilog="\b\nExamples:\n"
    "  gpu-preflight receipt                    the engine this container runs\n"
    "  gpu-preflight receipt --url http://gpu-box:8080 --json\n"
    "  gpu-preflight receipt --log engine.log   add llama.cpp's logged buffers (run it with -lv 4)"
)
@json_option
@click.option("--url", metavar="URL", help="Where the engine answers (default: from plan.json).")
@click.option("--pid", type=click.IntRange(1), help="The engine's PID (default: found by its argv).")
@click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    type=click.FloatRange(1, 86400),
    show_default=True,
    help="Seconds to wait for /health.",
)
@click.option(
    "--tokens", default=128, type=click.IntRange(8, 4096), show_default=True, help="Per stream."
)
@click.option(
    "--log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The engine's start-up log, for llama.cpp's per-buffer figures.",
)
@click.option("--no-write", is_flag=True, help="Print only; leave receipt.json as it is.")
def receipt(
    as_json: bool,
    url: str | None,
    pid: int | None,
    timeout_s: float,
    tokens: int,
    log: Path | None,
    no_write: bool,
) -> None:
    """Measure the running engine against its plan: memory per device, decode speed, peaks.

    Reads plan.json (and profile.json) from PREFLIGHT_PROFILE_DIR, waits for the engine's /health,
    reads its own figures (/props, /metrics), runs a short fixed decode workload (one stream, then
    the planned parallel count), and writes receipt.json plus a copy under receipts/ that later
    plans calibrate from. The image does this by itself once the engine is healthy
    (PREFLIGHT_RECEIPT=off stops it). Exit 0: complete or partial; 4: failed (never healthy).
    """
    from gpu_preflight.cli.receipt_cmd import run_receipt

    code = run_receipt(
        dict(os.environ), url, pid, timeout_s, tokens, log, as_json, write=not no_write
    )
    if code:
        sys.exit(code)


@main.command(
    epilog="\b\nExamples:\n"
    "  gpu-preflight compose > compose.yaml              this machine\n"
    "  gpu-preflight compose --simulate rtx-4090,rtx-3060 --out mixed.yaml\n"
    "  gpu-preflight compose --simulate rtx-4090 --with asr:4:2 --with tts:2:1"
)
@simulate_option
@host_ram_option
@host_bandwidth_option
@click.option(
    "--with",
    "with_services",
    multiple=True,
    metavar="NAME:GIB:PRIORITY[:GPU]",
    help="A co-resident service and its VRAM need, e.g. asr:4:2 (4 GiB at priority 2 on GPU 0). "
    "Higher priorities are placed first; the LLM is always the lowest.",
)
@click.option("--image", default=None, metavar="IMAGE", help="The gpu-preflight image to run.")
@click.option("--port", default=8080, type=click.IntRange(1, 65000), help="The first LLM port.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
def compose(
    simulate: str | None,
    host_ram: float | None,
    host_bandwidth: float | None,
    with_services: tuple[str, ...],
    image: str | None,
    port: int,
    out: Path | None,
) -> None:
    """A compose file for this machine (or --simulate'd hardware): one service per server.

    Exit 0 written, 3 when an LLM service would refuse (nothing is written), 2 bad input.
    """
    from gpu_preflight import compose as stacks
    from gpu_preflight import pipeline

    env = dict(os.environ)
    services = [stacks.parse_service(t) for t in with_services]
    base = pipeline.prepare(env)  # every input checked before the probe
    profile = _get_profile(env, simulate, host_ram, None, False, None, None, host_bandwidth)

    def planner(p: Any, reserve: int) -> Any:
        extra = {"PREFLIGHT_RESERVE_GB": f"{reserve / GIB:g}"} if reserve else {}
        inputs = pipeline.prepare({**env, **extra}) if extra else base
        return pipeline.plan_on(inputs, p, ("vllm", "llama.cpp"))

    stack = stacks.build_stack(profile, services, planner, port)
    refused = [s for s in stack.servers if s.plan.verdict != "ship"]
    if refused:
        for s in refused:
            click.echo(f"gpu-preflight: {s.name} would refuse: {s.plan.reasons[0]}", err=True)
        sys.exit(EXIT_REFUSE)
    text = stacks.render(
        stack,
        stacks.compose_document(stack, image or stacks.DEFAULT_IMAGE),
        _command_line(simulate, with_services),
    )
    if out is None:
        click.echo(text, nl=False)
    else:
        from gpu_preflight.launch import scrub, write_atomic

        write_atomic(out, scrub(text, os.environ))  # a written file is output: secrets masked


def _command_line(simulate: str | None, with_services: tuple[str, ...]) -> str:
    parts = ["gpu-preflight", "compose"]
    if simulate:
        parts += ["--simulate", simulate]
    for w in with_services:
        parts += ["--with", w]
    return " ".join(parts)


from gpu_preflight.cli.k8s_cmd import k8s as _k8s  # noqa: E402

main.add_command(_k8s)  # `gpu-preflight k8s` (cli/k8s_cmd.py)


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


def _inputs(
    env: Mapping[str, str], engine_argv: tuple[str, ...], options: Mapping[str, str | None]
) -> Any:
    from gpu_preflight import pipeline

    return pipeline.prepare(env, engine_argv, options)


def _write_out(path: Path, doc: Any) -> None:
    from gpu_preflight.inputs.secrets import mask_doc, secret_values
    from gpu_preflight.launch import write_json_atomic

    try:  # a written file is output: secrets masked (inputs/secrets.py)
        write_json_atomic(path, mask_doc(doc, secret_values(os.environ)))
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
    from gpu_preflight.inputs.probe_options import probe_options
    from gpu_preflight.probe.collect import collect_hardware

    try:
        opts = probe_options(env, bench, bench_dir, cache_dir)
        hw = collect_hardware(env, opts)
    except InvalidInput as exc:  # malformed NVIDIA_VISIBLE_DEVICES and other bad environment
        _die(str(exc), exc.exit_code)
    return make_profile(hw)


def _plan(inputs: Any, profile: Any) -> Any:
    from gpu_preflight import pipeline

    return pipeline.plan_on(inputs, profile, ("vllm", "llama.cpp"))


def entry() -> None:
    """The console script: the commands, then a flush whose failure is a line, not a traceback."""
    code = 0
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        returned = main.main(standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    try:
        sys.stdout.flush()
    except OSError as exc:
        # stdout is full, closed or gone (plan --json > /dev/full).
        _quiet_stdout()
        click.echo(
            f"gpu-preflight: error: cannot write the output: {exc.strerror or exc}", err=True
        )
        code = code or EXIT_INVALID
    sys.exit(code)


def _quiet_stdout() -> None:
    """After a failed write to stdout, stop Python retrying the flush at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    entry()
