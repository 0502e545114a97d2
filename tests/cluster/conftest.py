"""Shared helpers for the cluster tests: the k8s command in-process, and plans per pool."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from gpu_preflight.cli.main import main
from gpu_preflight.cluster.inventory import parse_simulate
from gpu_preflight.cluster.layout import Planner, PoolPlan, plan_pools


@pytest.fixture
def k8s(monkeypatch):
    """Run `gpu-preflight k8s ARGS` in-process with a clean planner environment."""
    for var in list(os.environ):
        if var.startswith(("PREFLIGHT_", "VLLM_", "LLAMA_ARG_", "LWS_", "KUBECONFIG")):
            monkeypatch.delenv(var, raising=False)

    def run(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(main, ["k8s", *args], env=env, catch_exceptions=False)

    return run


def plans(model: str | None, *pools: str, args: tuple[str, ...] = ()) -> dict[str, PoolPlan]:
    planner = Planner.create({}, args, {"--model": model})
    return {p.pool.name: p for p in plan_pools(planner, [parse_simulate(s) for s in pools])}
