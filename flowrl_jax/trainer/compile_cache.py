"""JAX's persistent compilation cache for a run: every compiled program is written under
`<workdir>/compile_cache` (or `train.compile_cache`, e.g. a bucket path the hosts share), so a
restarted run (a preempted pod job, a resumed run) reads its programs back instead of compiling
them again. A program that calls the host (a host reward or the phase marks inside the fused step)
has the callback's address in its key and is compiled afresh by each process: on TPU and GPU the
trainer keeps such calls out of its programs (loop.choose_fused, loop.phase_times).

`counts()` tells what the cache did in this process, from JAX's own monitoring events; a run logs
it at its end ("compilation cache ...: N programs read, M compiled")."""

from __future__ import annotations

import logging
import os
import threading

import jax
from jax.experimental.compilation_cache import compilation_cache
from ml_collections import ConfigDict

log = logging.getLogger(__name__)

OFF = "off"
_EVENTS = {
    "/jax/compilation_cache/compile_requests_use_cache": "requests",
    "/jax/compilation_cache/cache_hits": "read",
}
_counts = {"requests": 0, "read": 0}
_lock = threading.Lock()
_listening = False


def _count(event: str, **_):
    name = _EVENTS.get(event)
    if name is not None:
        with _lock:
            _counts[name] += 1


def directory(config: ConfigDict) -> str | None:
    """Where the run's programs are cached: train.compile_cache, else JAX_COMPILATION_CACHE_DIR
    (the user's own choice), else <workdir>/compile_cache; None when train.compile_cache is
    "off"."""
    where = config.train.compile_cache
    if where.lower() == OFF:
        return None
    return (
        where
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.path.join(config.workdir, "compile_cache")
    )


def enable(config: ConfigDict) -> str | None:
    """Point JAX's persistent cache at the run's directory (before the run compiles anything) and
    cache every program however fast it compiled. -> the directory, or None (off)."""
    global _listening
    path = directory(config)
    if not _listening:
        jax.monitoring.register_event_listener(_count)
        _listening = True
    if path is None:
        if jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", None)
            compilation_cache.reset_cache()
        return None
    if jax.config.jax_compilation_cache_dir != path:
        compilation_cache.set_cache_dir(path)
        # The cache object is made once per process, at the first compile: a process that ran
        # another workdir's job (tests, sweeps) must let go of that one.
        compilation_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    log.info("compilation cache: %s", path)
    return path


def counts() -> dict[str, int]:
    """Programs compiled through the cache in this process: "read" (found in the cache) and
    "compiled" (not found: compiled, then written)."""
    with _lock:
        return {"read": _counts["read"], "compiled": _counts["requests"] - _counts["read"]}


def summary(path: str | None, before: dict[str, int]) -> str:
    """One line: what the cache did since `before` (a `counts()`)."""
    if path is None:
        return "compilation cache: off (train.compile_cache=off)"
    now = counts()
    read, compiled = (now[k] - before[k] for k in ("read", "compiled"))
    return f"compilation cache {path}: {read} programs read, {compiled} compiled"
