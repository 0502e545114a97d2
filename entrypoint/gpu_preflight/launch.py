"""The only side effects: write the profile and plan as one set, then become the engine.

``exec_engine`` is the one place that calls ``os.execvpe``; tests patch that one name.
``write_set`` puts the profile, the plan (and any later receipt) in place together or not at all.
``scrub`` masks secret values in any text meant for a user, a log or a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_preflight.inputs.errors import EngineMissing
from gpu_preflight.inputs.flags import env_setting
from gpu_preflight.inputs.secrets import mask, mask_doc, secret_values

DEFAULT_PROFILE_DIR = "/var/lib/gpu-preflight"
ENGINE_BINARIES = {"llama.cpp": "llama-server", "vllm": "vllm"}
IMAGE_VARIANT = {
    "llama.cpp": "the `llamacpp` or `both` target of the gpu-preflight image",
    "vllm": "the `vllm` or `both` target of the gpu-preflight image",
}


@dataclass(frozen=True)
class ProfileDir:
    path: Path
    warning: str | None  # set when the requested directory was unusable and a temp dir is used


def _writable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def choose_profile_dir(env: Mapping[str, str]) -> ProfileDir:
    """PREFLIGHT_PROFILE_DIR (or the image default); an unwritable one falls back to a temp dir.

    A read-only volume must not stop the server from starting: the profile is a record, not a
    prerequisite, so the fallback is a warning.
    """
    # its row's parser (inputs/flags.py), the only reader of the variable
    wanted = Path(env_setting(env, "PREFLIGHT_PROFILE_DIR") or DEFAULT_PROFILE_DIR)
    problem = _writable(wanted)
    if problem is None:
        return ProfileDir(wanted, None)
    fallback = Path(tempfile.mkdtemp(prefix="gpu-preflight-"))
    return ProfileDir(
        fallback,
        f"profile directory {wanted} is not writable ({problem}); writing to {fallback} instead "
        "(set PREFLIGHT_PROFILE_DIR or mount a writable volume there to keep the record)",
    )


def write_atomic(path: Path, text: str) -> None:
    """Write text to path so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


@dataclass(frozen=True)
class WriteResult:
    """What ``write_set`` did: the whole new set is in place (``committed``), or nothing changed.

    ``message`` is the line to show the user; it never claims a write that did not happen.
    """

    directory: Path
    names: tuple[str, ...]
    committed: bool
    error: str | None = None  # why nothing was written (None when committed)
    previous: tuple[str, ...] = field(default=())  # names that existed before the attempt

    @property
    def message(self) -> str:
        listed = " and ".join(self.names) if len(self.names) <= 2 else ", ".join(self.names)
        if self.committed:
            return f"{listed} written to {self.directory}"
        verb = "is" if len(self.previous) == 1 else "are"
        kept = (
            f"the previous {' and '.join(self.previous)} in it {verb} untouched"
            if self.previous
            else "nothing in it was changed"
        )
        return f"{listed} NOT written to {self.directory} ({self.error}); {kept}"


class _SetWriteFailed(Exception):
    pass


def _why(exc: OSError, name: str) -> str:
    return f"{name}: {exc.strerror or exc}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the renames are still atomic
    finally:
        os.close(fd)


def write_set(
    directory: Path, docs: Mapping[str, Any], secrets_: Sequence[str] = ()
) -> WriteResult:
    """Write several files (``{"profile.json": doc, "plan.json": doc}``) as one set.

    Either every new file is in place, or every previous file is untouched; the returned
    ``WriteResult`` says which (it does not raise for an ``OSError``). A value is a JSON document,
    or a ``str`` written as it is. Every string in it has the run's secret values (``secrets_``,
    inputs/secrets.py ``secret_values``) masked: a file is output too.

    How: the files stay plain files under their usual names, so readers need nothing new.
    1. Refuse up front when a target exists as something other than a regular file or a symlink
       (``profile.json`` as a directory would make step 3 fail half-way).
    2. Write every new file to a temp name in the same directory and fsync it. Running out of
       space or permissions fails here, when nothing has been touched yet.
    3. Commit: for each name, hard-link the old file to a backup name (so the name never
       disappears), then ``os.replace`` the temp over it. If any step fails, every name already
       replaced is restored from its backup (or removed, if it did not exist) - renames in one
       directory need no space, so the roll-back itself does not run out of room.
    4. fsync the directory, then drop the backups.
    A crash (power loss) during step 3 itself could still leave a mix; the window is a few
    renames long, and each file is always whole.
    """
    names = tuple(docs)
    texts = {
        # allow_nan=False: a NaN in a plan is a bug to report, never a file that is not JSON.
        n: (
            mask(d, secrets_)
            if isinstance(d, str)
            else json.dumps(mask_doc(d, secrets_), indent=2, allow_nan=False) + "\n"
        )
        for n, d in docs.items()
    }
    token = secrets.token_hex(4)
    temps: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    replaced: list[str] = []
    previous: list[str] = []

    def fail(why: str) -> WriteResult:
        return WriteResult(directory, names, False, why, tuple(previous))

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(_why(exc, str(directory)))
    for n in names:
        target = directory / n
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return fail(_why(exc, n))
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return fail(f"{n} exists there as {kind}")
        previous.append(n)
    current = names[0] if names else ""
    try:
        for n in names:
            current = n
            tmp = directory / f".{n}.{token}.tmp"
            temps[n] = tmp
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(texts[n])
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for n in names:
            current = n
            target = directory / n
            if n in previous:
                backup = directory / f".{n}.{token}.old"
                try:
                    os.link(target, backup, follow_symlinks=False)
                except OSError:
                    os.replace(target, backup)  # no hard links here: move it aside instead
                backups[n] = backup
            os.replace(temps[n], target)
            replaced.append(n)
    except OSError as exc:
        for n in replaced + [m for m in backups if m not in replaced]:
            try:
                if n in backups:
                    os.replace(backups[n], directory / n)
                else:
                    (directory / n).unlink(missing_ok=True)
            except OSError:
                pass  # best effort: the backup name still holds the old file
        for p in list(temps.values()) + list(backups.values()):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        _fsync_dir(directory)
        return fail(_why(exc, current))
    _fsync_dir(directory)
    for b in backups.values():
        with contextlib.suppress(OSError):
            b.unlink(missing_ok=True)
    return WriteResult(directory, names, True, None, tuple(previous))


def find_engine(engine: str, env: Mapping[str, str]) -> str:
    """The engine binary's path, or EngineMissing naming it and the image variant that has it."""
    binary = ENGINE_BINARIES[engine]
    found = shutil.which(binary, path=env.get("PATH"))
    if found is None:
        raise EngineMissing(
            f"the plan needs {engine}, but `{binary}` is not on PATH in this image. Use "
            f"{IMAGE_VARIANT[engine]}, or set PREFLIGHT_ENGINE to an engine this image has."
        )
    return found


def available_engines(env: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(e for e, b in ENGINE_BINARIES.items() if shutil.which(b, path=env.get("PATH")))


def engine_environment(env: Mapping[str, str], additions: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: ours plus the plan's additions. Secrets pass through here only."""
    out = dict(env)
    out.update(additions)
    return out


def scrub(text: str, env: Mapping[str, str]) -> str:
    """Mask every secret value of ``env`` in text meant for a user, a log or a file - wherever it
    appears (inputs/secrets.py ``mask``: also when pasted into another setting, or cut short)."""
    return mask(text, secret_values(env))


def exec_engine(
    argv: tuple[str, ...], env: Mapping[str, str], receipt: ReceiptJob | None = None
) -> None:
    """Replace this process with the engine, so it receives the container's signals directly.

    ``receipt``: fork the receipt's watcher first (``start_receipt_watcher``); the engine is still
    this PID.
    """
    if receipt is not None:
        start_receipt_watcher(receipt, env)
    # exec discards Python's buffers: what the summary printed must be out before it.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], list(argv), dict(env))


# ---------------------------------------------------------------------------------------------
# The receipt: a watcher forked before the exec (docs/receipts.md says why this mechanism)


@dataclass(frozen=True)
class ReceiptJob:
    """What the watcher needs: where the engine answers, the plan it runs, where to write."""

    base_url: str
    plan: Any  # plan.types.Plan (kept untyped here: launch must not import the planner)
    profile: Any  # profile_types.Profile
    profile_dir: Path
    timeout_s: float
    max_tokens: int


def write_receipt(
    directory: Path, doc: Mapping[str, Any], key_id: str, name: str, secrets_: Sequence[str] = ()
) -> WriteResult:
    """receipt.json beside the plan, and the same document in receipts/<key>/ for calibration.

    The history copy goes first: a receipt.json always has its history entry. Older history files
    of the key beyond the kept number are removed (receipt/document.py ``stale_files``).
    """
    from gpu_preflight.receipt.document import HISTORY_DIR, RECEIPT_FILE, stale_files

    hist = write_set(directory / HISTORY_DIR / key_id, {name: doc}, secrets_)
    if not hist.committed:
        return hist
    for old in stale_files(directory, key_id):
        with contextlib.suppress(OSError):
            old.unlink()
    return write_set(directory, {RECEIPT_FILE: doc}, secrets_)


def _watch(job: ReceiptJob, engine_pid: int, env: Mapping[str, str], started_at: float) -> None:
    from gpu_preflight.receipt.document import history_name, receipt_to_dict
    from gpu_preflight.receipt.render import summary_lines
    from gpu_preflight.receipt.take import Request, take

    def say(line: str) -> None:
        os.write(1, (f"gpu-preflight receipt: {scrub(line, env)}\n").encode())

    try:
        receipt = take(
            Request(
                base_url=job.base_url,
                plan=job.plan,
                plan_file=str(job.profile_dir / "plan.json"),
                profile=job.profile,
                pid=engine_pid,
                timeout_s=job.timeout_s,
                max_tokens=job.max_tokens,
                alive=lambda: os.getppid() == engine_pid,
                watcher_pid=os.getpid(),
                started_at=started_at,
            )
        )
        written = write_receipt(
            job.profile_dir,
            receipt_to_dict(receipt),
            receipt.key.id,
            history_name(receipt),
            secret_values(env),
        )
        for line in summary_lines(receipt):
            say(line)
        say(written.message if written.committed else f"warning: {written.message}")
    except Exception as exc:  # a failed receipt is a warning, never a crash of anything else
        say(f"warning: the receipt failed ({type(exc).__name__}: {scrub(str(exc), env)[:200]})")


def start_receipt_watcher(job: ReceiptJob, env: Mapping[str, str]) -> int | None:
    """Fork the watcher; the caller then execs the engine in this process (PID 1 stays the engine).

    The child takes the receipt, then sleeps until the engine exits (its parent changes), so it
    never lingers as a zombie under an engine that does not reap children. Returns the child's PID
    in the parent (None where fork is not possible: the engine then starts without a receipt).
    """
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    engine_pid = os.getpid()
    started_at = time.monotonic()
    try:
        child = os.fork()
    except OSError:
        return None
    if child:
        return child
    # -- the watcher --------------------------------------------------------------------------
    code = 0
    try:
        # The container's signals are the engine's: Ctrl-C or a signal to the group only ends us.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.nice(5)  # the engine comes first on a CPU-only machine
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        _watch(job, engine_pid, env, started_at)
        while os.getppid() == engine_pid:
            time.sleep(5)
    except BaseException:
        code = 1
    finally:
        os._exit(code)
