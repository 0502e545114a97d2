"""`gpu-preflight run` on one simulated node, for the live multi-node test: the real entrypoint
(cli.main.entry: inputs, probe, plan, the LWS rank's argv, the record, the exec), with only the
hardware probe replaced by one node of the named GPUs (the hardware edge: this machine has no
GPU). Usage: python entry_on_node.py GPU_SPEC [ENGINE_ARGS...]"""

from __future__ import annotations

import sys

from gpu_preflight import pipeline
from gpu_preflight.cli.main import entry
from gpu_preflight.probe.collect import simulated_hardware

GIB = 2**30

hardware = simulated_hardware(sys.argv[1], 64 * GIB)
pipeline.collect_hardware = lambda env, opts: hardware  # type: ignore[assignment]
sys.argv = ["gpu-preflight", "run", "--", *sys.argv[2:]]
entry()
