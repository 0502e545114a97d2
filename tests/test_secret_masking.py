"""A secret's value is masked wherever it appears in output (issue 20 item 5), also when the user
typed it into another setting; the exec'd engine argv keeps the real value."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_preflight import launch
from gpu_preflight.cli.main import main
from gpu_preflight.cli.receipt_cmd import find_engine_pid
from gpu_preflight.inputs.secrets import MASK, MaskingStream, mask, mask_doc, secret_values
from gpu_preflight.plan.document import plan_from_dict

TOKENS = st.builds(
    lambda body: "hf_" + body,
    st.text(string.ascii_letters + string.digits, min_size=12, max_size=40),
)
FEW = settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def clean_env(monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith(("PREFLIGHT_", "VLLM_", "LLAMA_ARG_", "HF_")) or var in (
            "CUDA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES",
        ):
            monkeypatch.delenv(var, raising=False)


def _files(directory: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(directory.rglob("*")) if p.is_file())


# -- the function --------------------------------------------------------------------------------


def test_secret_values_come_from_secret_variables_and_secret_flags_8_chars_or_more():
    env = {"HF_TOKEN": "hf_12345678", "VLLM_API_KEY": "short", "PREFLIGHT_MODEL": "hf_99999999"}
    argv = ["--alias", "x", "--api-key", "sk-abcdefgh", "--hf-token=hf_zyxwvuts"]
    assert set(secret_values(env, argv)) == {"hf_12345678", "sk-abcdefgh", "hf_zyxwvuts"}
    assert secret_values({"HF_TOKEN": "1234567"}) == ()  # under 8: too common to mask


@given(TOKENS)
def test_mask_hides_every_form_of_the_token(token):
    secrets = secret_values({"HF_TOKEN": token})
    shown = (
        f"url https://user:{token}@host/x, repr {token!r}, json {json.dumps({'k': token})}, "
        f"cut {token[:9]}..."
    )
    out = mask(shown, secrets)
    assert token[:8] not in out and MASK in out
    doc = mask_doc({token: [token, {"a": f"x{token}y"}, 3, None]}, secrets)
    assert token[:8] not in json.dumps(doc) and doc["***"][2:] == [3, None]


def test_masking_stream_masks_each_write():
    import io

    inner = io.StringIO()
    MaskingStream(inner, ("hf_secretvalue",)).write("a hf_secretvalue b\n")
    assert inner.getvalue() == "a *** b\n"


# -- the commands --------------------------------------------------------------------------------


@FEW
@given(TOKENS)
def test_plan_json_and_estimate_never_print_the_token(clean_env, token):
    cli = CliRunner()
    env = {
        "HF_TOKEN": token,
        "PREFLIGHT_BENCH": "off",
        "HF_ENDPOINT": f"https://user:{token}@hub.example",
    }
    r = cli.invoke(main, ["plan", "--simulate", "rtx-4090", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert token not in r.output and token[:8] not in r.output
    e = cli.invoke(
        main,
        [
            "estimate",
            "--gpu",
            "h100-sxm",
            "--json",
            "--",
            "vllm",
            "serve",
            "Qwen/Qwen3-8B",
            "--max-model-len",
            "8192",
            "--served-model-name",
            token,
            "--some-unknown-flag",
            token,
        ],
        env=env,
    )
    assert e.exit_code == 0, e.output
    assert token not in e.output and token[:8] not in e.output and MASK in e.output, e.output
    t = cli.invoke(
        main,
        [
            "estimate",
            "--cpu",
            "--",
            "llama-server",
            "-hf",
            "Qwen/Qwen3-8B-GGUF",
            "-c",
            "8192",
            "--alias",
            token,
        ],
        env=env,
    )
    assert t.exit_code == 0, t.output
    assert token not in t.output and token[:8] not in t.output, t.output


@FEW
@given(TOKENS)
def test_run_dry_run_masks_output_and_files(clean_env, tmp_path_factory, token):
    d = tmp_path_factory.mktemp("p")
    env = {"PREFLIGHT_PROFILE_DIR": str(d), "PREFLIGHT_BENCH": "off", "HF_TOKEN": token}
    r = CliRunner().invoke(
        main, ["run", "--dry-run", "--", "--alias", token, "--some-unknown-flag", token], env=env
    )
    assert r.exit_code == 0, r.output
    assert token[:8] not in r.output and token[:8] not in _files(d)
    plan = plan_from_dict(json.loads((d / "plan.json").read_text()))
    assert "--alias" in plan.argv and MASK in plan.argv  # the record says where it was


@FEW
@given(TOKENS)
def test_refusal_and_bad_input_never_print_the_token(clean_env, tmp_path_factory, token):
    d = tmp_path_factory.mktemp("p")
    cli = CliRunner()
    base = {"PREFLIGHT_PROFILE_DIR": str(d), "PREFLIGHT_BENCH": "off", "HF_TOKEN": token}
    refuse = cli.invoke(
        main,
        ["run", "--", "--served-model-name", token],
        env={**base, "PREFLIGHT_ENGINE": "vllm"},
    )
    assert refuse.exit_code == 3, refuse.output
    assert token[:8] not in refuse.output and token[:8] not in _files(d)
    for env, args in (
        ({**base, "PREFLIGHT_MODEL": f"/models/{token}/m.gguf"}, ["run", "--dry-run"]),
        (base, ["run", "--dry-run", "--", "--speculative-config", json.dumps({"x": token})]),
        ({**base, "PREFLIGHT_CONTEXT": token}, ["plan", "--simulate", "rtx-4090"]),
        ({"PREFLIGHT_PROFILE_DIR": str(d)}, ["run", "--", "--api-key", token, "--alias", token]),
    ):
        bad = cli.invoke(main, args, env=env)
        assert bad.exit_code == 2, (args, bad.output)
        assert token[:8] not in bad.output, bad.output
        assert "Traceback" not in bad.output


def test_the_exec_d_argv_keeps_the_real_value(clean_env, tmp_path, monkeypatch):
    token = "hf_" + "Q7w8E9r0" * 3
    called = []
    monkeypatch.setattr(launch, "exec_engine", lambda argv, env, **kw: called.append(argv))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\n")
    (bin_dir / "llama-server").chmod(0o755)
    env = {
        "PREFLIGHT_PROFILE_DIR": str(tmp_path / "p"),
        "PREFLIGHT_BENCH": "off",
        "HF_TOKEN": token,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
    }
    r = CliRunner().invoke(main, ["run", "--", "--alias", token], env=env)
    assert r.exit_code == 0, r.output
    ((argv,),) = [(a,) for a in called]
    assert token in argv and token not in r.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert token not in json.dumps(plan)
    assert [mask(a, (token,)) for a in argv] == plan["argv"]


def test_receipt_finds_the_engine_by_its_masked_argv(tmp_path):
    token = "hf_" + "Z1x2C3v4" * 3
    argv = ("llama-server", "--alias", token, "--port", "8080")
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    plan = type("P", (), {"argv": tuple(mask(a, (token,)) for a in argv)})()
    assert find_engine_pid(plan, proc, (token,)) == 4242
    assert find_engine_pid(plan, proc) is None


def test_manifests_keep_the_secret_a_reference_and_never_print_its_value(clean_env, tmp_path):
    token = "hf_" + "M5n6B7v8" * 3
    cli = CliRunner()
    k = cli.invoke(
        main,
        ["k8s", "--simulate", "pool=1x1xh100-sxm", "--out", str(tmp_path / "k.yaml")],
        env={"HF_TOKEN": token, "PREFLIGHT_CONTEXT": "8192"},
    )
    text = (tmp_path / "k.yaml").read_text()
    assert k.exit_code == 0, k.output
    assert "secretKeyRef" in text and "HF_TOKEN" in text and token not in text + k.output
    c = cli.invoke(
        main,
        ["compose", "--simulate", "rtx-4090"],
        env={"HF_TOKEN": token, "PREFLIGHT_BENCH": "off"},
    )
    assert c.exit_code == 0, c.output
    assert "HF_TOKEN" in c.output and token not in c.output
    bad = cli.invoke(
        main,
        ["compose", "--simulate", "rtx-4090"],
        env={"HF_TOKEN": token, "PREFLIGHT_MODEL": f"/models/{token}.gguf"},
    )
    assert bad.exit_code == 2 and token[:8] not in bad.output and MASK in bad.output
