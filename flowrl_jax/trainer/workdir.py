"""What a workdir holds besides checkpoints and metrics: whose run it is, the config of every start,
and a lock while a job runs in it.

    <workdir>/run.json           the model and algorithm its checkpoints are of (checked every start)
    <workdir>/config.json        the resolved config of the latest start
    <workdir>/config.<N>.json    the config of the start that resumed after RL step N (0: the first)
    <workdir>/lock               host, pid and start time of the job running in it

Two jobs on one workdir (a double submission, a requeue while the old job lives) would delete each
other's in-flight checkpoints, so a second job is refused with a message naming the holder. A lock
whose job is gone (SIGKILL, a lost host) is stale and taken over with a warning: on the holder's own
host that is a pid that no longer runs (or runs another program), elsewhere a lock its holder has
not rewritten for `STALE_AFTER` seconds (it rewrites it every `HEARTBEAT` seconds). On several hosts
the lock is the coordinator's (process 0); the others learn the outcome from it. The workdir may be
local or on object storage (gs://): every file here goes through flowrl_jax.storage.
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

from flowrl_jax import storage
from flowrl_jax.models.families import DecoderConfig

log = logging.getLogger("flowrl_jax")

HEARTBEAT = 15.0
STALE_AFTER = 60.0

# Fields that change what is computed but not what the parameters are: a run may resume with others.
_RUNTIME_FIELDS = {
    "dtype",
    "param_dtype",
    "remat",
    "attention_block",
    "causal_block",
    "decode_block",
    "attention",
    "decode_attention",
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
    if storage.exists(path):
        theirs = json.loads(storage.read_text(path))
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
    if resumed_after and storage.exists(path):
        old = json.loads(storage.read_text(path))
        changes = _diff(flat(old), flat(new), "{key}: {old!r} -> {new!r}")
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
    storage.makedirs(os.path.dirname(path) or ".")
    storage.write_atomic(path, json.dumps(data, indent=1))


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
    takes it before building the model, the trainer again around the run.

    The lock is a file created only if absent (an object upload with the precondition "none of
    this name" on gs://) holding its job's host, pid and start, and a heartbeat counter its holder
    rewrites every `HEARTBEAT` seconds. A lock of another host is stale once it has not been
    rewritten for `STALE_AFTER` seconds: a job that finds a lock rewritten more recently watches it
    (up to that long) and is refused as soon as it changes. So a VM recreated after a preemption
    (another hostname) waits out its previous incarnation's last heartbeat, at most `STALE_AFTER`
    seconds, instead of exiting; a second live job is refused within a heartbeat."""

    _held: dict[str, list] = {}  # path -> [depth, heartbeat stop event]

    def __init__(self, workdir: str):
        self.path = os.path.join(storage.absolute(workdir), "lock")

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
            storage.remove(self.path)

    def _me(self) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "beat": 0,
        }

    def _mine(self, holder: dict | None) -> bool:
        me = self._me()
        return bool(holder) and all(holder.get(k) == me[k] for k in ("host", "pid"))

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_text(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or garbage: treated as stale below

    def _take(self) -> str:
        """Take the lock (process 0). -> '' or the reason it is refused."""
        storage.makedirs(os.path.dirname(self.path))
        me = json.dumps(self._me(), indent=1)
        for _ in range(3):
            if storage.create_exclusive(self.path, me):
                return ""
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
            if why:  # '' = released while watched
                log.warning("taking over the stale lock %s: %s", self.path, why)
                storage.remove(self.path)
        return f"could not take the lock {self.path}: other jobs keep creating it"

    def _stale(self, holder: dict) -> str | None:
        """Why `holder`'s lock is stale ('' if it was released meanwhile), or None while its job
        may still run."""
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
            age = time.time() - storage.modified(self.path)
        except FileNotFoundError:
            return ""
        if age > STALE_AFTER:
            return f"host {holder['host']}'s job has not rewritten it for {age:.0f} s"
        # Rewritten recently: watch it. A live holder rewrites it within a heartbeat.
        wait = STALE_AFTER - age
        log.warning(
            "workdir lock %s: pid %s on host %s, heartbeat %.0f s ago; watching it for up to "
            "%.0f s (a live job rewrites it every %.0f s, a gone one's goes stale)",
            self.path,
            holder["pid"],
            holder["host"],
            age,
            wait,
            HEARTBEAT,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(min(HEARTBEAT / 4, max(deadline - time.monotonic(), 0)))
            now = self._read()
            if now is None:
                return ""
            if now != holder:
                return None
        return f"host {holder['host']}'s job has not rewritten it for {STALE_AFTER:.0f} s"

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            holder = self._read()
            if not self._mine(holder):
                continue  # taken over (this job was thought gone): not ours to rewrite
            beat = holder | {"beat": holder.get("beat", 0) + 1}
            with contextlib.suppress(OSError):
                storage.write_atomic(self.path, json.dumps(beat, indent=1))
