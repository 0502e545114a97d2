"""llama_dry_run when llama-fit-params loses its breakdown record.

Captured from the real llama-fit-params 0.3.36 (86 runs in 1000 on a loaded 2-core machine): exit 0,
the plain printf lines, but no `fit_memory_breakdown` JSON line, because the asynchronous log
worker had not written it at exit. The stand-in below replays exactly those outputs: some runs without
the record, then one with it.
"""

from __future__ import annotations

import stat
from pathlib import Path

from gpu_preflight.engine_check import ATTEMPTS, llama_dry_run

LOST = (
    '{"type":"log","time":2134,"level":"info","msg":"llama_fit_params: printing estimated '
    'memory in MiB to stdout (device, model, context, compute) ...\\n"}\nHost 32 11 12 \n'
)
FULL = LOST.replace(
    "Host 32 11 12",
    '{"type":"fit_memory_breakdown","data":{"unit":"MiB","rows":[{"kind":"host","name":"Host",'
    '"self":56,"model":32,"context":11,"compute":12}]}}\nHost 32 11 12',
)


def _replay(tmp_path: Path, outputs: list[str]) -> str:
    for i, out in enumerate(outputs):
        (tmp_path / f"out{i}").write_text(out)
    script = tmp_path / "llama-fit-params"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{tmp_path}/n" 2>/dev/null || echo 0)\n'
        f'echo $((n + 1)) > "{tmp_path}/n"\n'
        f'cat "{tmp_path}/out$n"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


ARGV = ("llama-server", "--model", "/m.gguf", "--fit", "off", "--ctx-size", "4096")


def test_a_lost_breakdown_record_is_asked_for_again(tmp_path):
    outputs = [LOST] * (ATTEMPTS - 1) + [FULL]
    got = llama_dry_run(ARGV, {"PATH": "/usr/bin:/bin"}, binary=_replay(tmp_path, outputs))
    assert not isinstance(got, str), got
    host = next(d for d in got.devices if d.name == "Host")
    assert (host.model_bytes, host.context_bytes, host.compute_bytes) == (
        32 * 2**20,
        11 * 2**20,
        12 * 2**20,
    )
    assert (tmp_path / "n").read_text().strip() == str(ATTEMPTS)


def test_lost_every_time_is_said_not_guessed_from_the_plain_lines(tmp_path):
    outputs = [LOST] * ATTEMPTS
    got = llama_dry_run(ARGV, {"PATH": "/usr/bin:/bin"}, binary=_replay(tmp_path, outputs))
    assert got == f"llama-fit-params printed no memory breakdown ({ATTEMPTS} runs)"
    assert (tmp_path / "n").read_text().strip() == str(ATTEMPTS)
