"""What a workdir holds besides checkpoints and metrics: whose run it is, the config of every start,
and a lock while a job runs in it.

    <workdir>/run.json           the model and algorithm its checkpoints are of (checked every start)
    <workdir>/config.json        the resolved config of the latest start
    <workdir>/config.<N>.json    the config of the start that resumed after RL step N (0: the first)
    <workdir>/lock               host, pid and start time of the job running in it

Two jobs on one workdir (a double submission, a requeue while the old job lives) would delete each
other's in-flight checkpoints, so a second job is refused with a message naming the holder. A lock
whose job is gone (SIGKILL, a lost host) is stale and taken over with a warning: on the holder's own
host that is a pid that no longer runs (or runs another program), elsewhere a heartbeat older than
`STALE_AFTER` seconds (the holder touches the file every `HEARTBEAT` seconds). On several hosts the
lock is the coordinator's (process 0); the others learn the outcome from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time

import jax

from flowrl_jax.models.families import DecoderConfig

log = logging.getLogger("flowrl_jax")

HEARTBEAT = 30.0
STALE_AFTER = 600.0

# Fields that change what is computed but not what the parameters are: a run may resume with others.
_RUNTIME_FIELDS = {
    "dtype",
    "param_dtype",
    "remat",
    "attention_block",
    "causal_block",
    "max_position_embeddings",
}


class WorkdirBusy(RuntimeError):
    """Another live job holds the workdir."""


def signature(model_cfg: DecoderConfig, algorithm: str) -> dict:
    """What a workdir's checkpoints are checkpoints of."""
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in _RUNTIME_FIELDS}
    return json.loads(json.dumps({"model": model, "algorithm": algorithm}))  # tuples -> lists


def claim_workdir(workdir: str, sig: dict) -> None:
    """Refuse a workdir that holds a run of another model or algorithm; mark a new one as ours."""
    path = os.path.join(workdir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            theirs = json.load(f)
        if theirs != sig:
            diff = _diff(flat(theirs), flat(sig))
            raise ValueError(
                f"workdir {workdir} holds a run of a different model or algorithm "
                f"({'; '.join(diff[:5])}); use a new --workdir, or delete it to start over"
            )
    elif jax.process_index() == 0:
        _write_json(path, sig)


def record_config(workdir: str, config_json: str, resumed_after: int) -> list[str]:
    """Keep this start's config (config.json, config.<resumed_after>.json); on a resume, log every
    key that differs from the previous start's. -> the changes, as 'key: old -> new' lines."""
    if jax.process_index() != 0:
        return []
    path = os.path.join(workdir, "config.json")
    new = json.loads(config_json)
    changes = []
    if resumed_after and os.path.exists(path):
        with open(path) as f:
            changes = _diff(flat(json.load(f)), flat(new), "{key}: {old!r} -> {new!r}")
        for line in changes:
            log.warning("config changed since the last start: %s", line)
    _write_json(os.path.join(workdir, f"config.{resumed_after}.json"), new)
    _write_json(path, new)
    return changes


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _diff(old: dict, new: dict, form: str = "{key}: {old!r} there, {new!r} here") -> list[str]:
    return [
        form.format(key=k, old=old.get(k), new=new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (telling a reused pid from the holder), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""  # alive, start time unknown (no /proc)


class WorkdirLock:
    """`<workdir>/lock` for as long as a job runs. Re-entrant within a process: the entry point
    takes it before building the model, the trainer again around the run."""

    _held: dict[str, list] = {}  # path -> [depth, heartbeat stop event]

    def __init__(self, workdir: str):
        self.path = os.path.abspath(os.path.join(workdir, "lock"))

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        if self.path in self._held:
            self._held[self.path][0] += 1
            return
        error = self._take() if jax.process_index() == 0 else ""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            refused = multihost_utils.broadcast_one_to_all(int(bool(error)))
            if int(refused) and not error:
                error = f"workdir {os.path.dirname(self.path)} is in use (see process 0's message)"
        if error:
            raise WorkdirBusy(error)
        stop = threading.Event()
        if jax.process_index() == 0:
            threading.Thread(target=self._beat, args=(stop,), daemon=True).start()
        self._held[self.path] = [1, stop]

    def release(self) -> None:
        held = self._held.get(self.path)
        if held is None:
            return
        held[0] -= 1
        if held[0]:
            return
        del self._held[self.path]
        held[1].set()
        if jax.process_index() == 0 and self._mine(self._read()):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def _me(self) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }

    def _mine(self, holder: dict | None) -> bool:
        me = self._me()
        return bool(holder) and all(holder.get(k) == me[k] for k in ("host", "pid"))

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or garbage: treated as stale below

    def _take(self) -> str:
        """Take the lock (process 0). -> '' or the reason it is refused."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = json.dumps(self._me(), indent=1)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile
                if self._mine(holder):  # this process's own, left by an earlier start in it
                    return ""
                why = self._stale(holder)
                if why is None:
                    return (
                        f"workdir {os.path.dirname(self.path)} is in use by another job: pid "
                        f"{holder['pid']} on host {holder['host']}, started {holder['started']} "
                        f"(lock file {self.path}). Wait for it or stop it, or pass another "
                        "--workdir; if that job is gone, delete the lock file"
                    )
                log.warning("taking over the stale lock %s: %s", self.path, why)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return ""
        return f"could not take the lock {self.path}: other jobs keep creating it"

    def _stale(self, holder: dict) -> str | None:
        """Why `holder`'s lock is stale, or None while its job may still run."""
        if not {"host", "pid", "started"} <= set(holder):
            return "the lock file is unreadable"
        if holder["host"] == socket.gethostname():
            now = _process_start(int(holder["pid"]))
            if now is None:
                return f"pid {holder['pid']} (started {holder['started']}) is gone"
            if holder.get("process_start") and now and now != holder["process_start"]:
                return f"pid {holder['pid']} is another process now"
            return None
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return "it was just released"
        if age > STALE_AFTER:
            return f"host {holder['host']}'s job has not touched it for {age:.0f} s"
        return None

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)
