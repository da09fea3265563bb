"""Checkpoints of a run, with Orbax: the whole train state (policy, heads, optimiser state, step, PRNG
key) plus a JSON record (the RL step, the data position, the config, the model signature).

Saves are asynchronous: the arrays are copied off the devices, then written in the background while
training goes on. Orbax writes each step into a temporary directory and renames it when complete, so
a run killed mid-save leaves a temporary directory, never a half-written step. Each save also stores a
fingerprint of every array (sum and sum of squares); a step whose arrays fail to read or disagree with
their fingerprint is skipped with a warning naming it, and the next older step is tried. The trainer
moves such a step aside, to `<workdir>/checkpoints.damaged/`, kept for inspection: the run then
saves that step again instead of finding it taken.

    <workdir>/checkpoints/<step>/state   the TrainState arrays (OCDBT)
    <workdir>/checkpoints/<step>/record  JSON: rl_step, data, config, signature, fingerprint
"""

from __future__ import annotations

import logging
import os
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax import storage
from flowrl_jax.models import lora
from flowrl_jax.trainer.step import TrainState

log = logging.getLogger(__name__)


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "every": 2,  # save every N RL steps; 0 = only at the end (and on SIGTERM, always)
            "keep": 3,  # the newest N checkpoints are kept
            "async_save": True,  # write in the background while training goes on
        }
    )


RULES = {"every": R.COUNT, "keep": R.POSITIVE_INT}


def _arrays(state: TrainState) -> dict:
    """TrainState -> a tree of plain arrays (a typed PRNG key is stored as its key data). With
    LoRA only what is trained is saved (`lora.split`): the frozen base is the run's model."""
    return {
        "step": state.step,
        "params": lora.split(state.params)[0],
        "opt_state": state.opt_state,
        "rng": jax.random.key_data(state.rng),
    }


def _target(like: TrainState) -> dict:
    """The restore target: shapes, dtypes and shardings of `like` (arrays or ShapeDtypeStructs
    with shardings)."""
    rng = like.rng
    data = jax.eval_shape(jax.random.key_data, rng)
    rng = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=rng.sharding)
    params = lora.split(like.params)[0]
    tree = {"step": like.step, "params": params, "opt_state": like.opt_state}
    tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    return tree | {"rng": rng}


@jax.jit
def fingerprint(tree) -> jax.Array:
    """[leaves, 2] float32: each array's sum and sum of squares."""
    rows = [
        jnp.stack([jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.square(x.astype(jnp.float32)))])
        for x in jax.tree.leaves(tree)
    ]
    return jnp.stack(rows)


class Checkpoints:
    """Save and restore a run's train state under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, cfg: ConfigDict):
        self.cfg = cfg
        self.directory = os.path.join(storage.absolute(workdir), "checkpoints")
        for name in storage.listdir(self.directory):
            if not name.isdigit():  # what a killed save leaves; Orbax deletes it below
                log.warning(
                    "checkpoint %s is incomplete (a save that did not finish); ignored",
                    os.path.join(self.directory, name),
                )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def due(self, rl_step: int) -> bool:
        return self.cfg.every > 0 and rl_step % self.cfg.every == 0

    def save(self, rl_step: int, state: TrainState, record: dict) -> None:
        """Start saving (returns once the arrays are off the devices). record: JSON-able."""
        arrays = _arrays(state)
        record = record | {
            "rl_step": rl_step,
            "fingerprint": np.asarray(fingerprint(arrays)).tolist(),
        }
        self.manager.save(
            rl_step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )

    def steps(self) -> list[int]:
        storage.forget_listings(self.directory)  # other processes or runs may have written since
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_latest(
        self, like: TrainState, step: int | None = None, set_aside: bool = False
    ) -> tuple[TrainState, dict] | None:
        """The newest readable checkpoint as (state placed like `like`, record), or None if there is
        none. Unreadable or corrupt steps are skipped with a warning, and with `set_aside` moved to
        `<workdir>/checkpoints.damaged/` (the trainer's choice; a reader such as the export leaves
        them). like: a TrainState of arrays or of ShapeDtypeStructs with shardings. step: that step
        only. With LoRA the restored state's frozen base is `like`'s own."""
        found = self._restore(_target(like), step, set_aside, policy_only=False)
        if found is None:
            return None
        arrays, record = found
        state = TrainState(
            arrays["step"],
            lora.join(arrays["params"], lora.split(like.params)[1]),
            arrays["opt_state"],
            jax.random.wrap_key_data(arrays["rng"]),  # the default impl, as jax.random.key
        )
        return state, record

    def restore_policy(self, like: TrainState, step: int | None = None) -> tuple[dict, dict] | None:
        """The policy parameters alone of the newest readable checkpoint (or `step`), as
        (params placed like `like.params["policy"]`, record), or None; with LoRA its adapters
        alone (`lora.base` of the run's model completes them). Nothing else is read: a
        reader (export, evaluation) needs neither the optimiser's moments nor the heads. like: the
        run's whole TrainState as shapes (jax.eval_shape; its optimiser structure locates the
        policy's rows in the saved fingerprint)."""
        found = self._restore(_target(like), step, set_aside=False, policy_only=True)
        return None if found is None else (found[0]["params"]["policy"], found[1])

    def _restore(self, target: dict, step: int | None, set_aside: bool, policy_only: bool):
        """(arrays, record) of the newest step that reads back equal to its fingerprint."""
        leaves = [path for path, _ in jax.tree_util.tree_leaves_with_path(target)]
        rows = slice(None)  # the fingerprint's rows of the arrays read
        if policy_only:
            policy = (jax.tree_util.DictKey("params"), jax.tree_util.DictKey("policy"))
            rows = [i for i, path in enumerate(leaves) if path[:2] == policy]
            target = {"params": {"policy": target["params"]["policy"]}}
            args = ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            )
            # Its own reader: the manager's handler for "state" is the one it saved (or first
            # read) with, which reads whole trees only.
            read_state = lambda path: ocp.PyTreeCheckpointer().restore(
                os.path.join(path, "state"), args=args
            )
        else:
            read_state = None
        listed = self.steps()
        _same_steps_everywhere(self.directory, listed)
        steps = reversed(listed) if step is None else [step]
        if step is not None and step not in listed:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}: {listed}")
        for step in steps:  # noqa: B020 -- the argument is consumed above
            path = os.path.join(self.directory, str(step))
            try:
                # Every process must see the same files before Orbax reads (its restore ends in a
                # barrier that a process failing early would never reach), and all must have read
                # before the fingerprint (a computation over every host's slices) runs.
                _same_files_everywhere(path)
                try:
                    if read_state is None:
                        got = self.manager.restore(
                            step,
                            args=ocp.args.Composite(
                                state=ocp.args.StandardRestore(target),
                                record=ocp.args.JsonRestore(),
                            ),
                        )
                        arrays, record = got["state"], got["record"]
                    else:
                        record = self.manager.restore(
                            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
                        )["record"]
                        arrays = read_state(path)
                except Exception as e:  # noqa: BLE001 -- agreed on below, then re-raised
                    _read_everywhere(path, e)
                    raise
                _read_everywhere(path, None)
                expected = np.asarray(record["fingerprint"], np.float32)
                if expected.shape != (len(leaves), 2):
                    raise ValueError(
                        f"its fingerprint has {len(expected)} arrays, this run's state {len(leaves)}"
                    )
                expected = expected[rows]
                actual = np.asarray(fingerprint(arrays))
                if not np.allclose(actual, expected, rtol=1e-5, atol=1e-6):
                    bad = np.flatnonzero(
                        ~np.isclose(actual, expected, rtol=1e-5, atol=1e-6).all(-1)
                    )
                    raise ValueError(f"arrays {bad.tolist()} differ from the fingerprint saved")
            except HostsDisagree:
                raise
            except Exception as e:  # noqa: BLE001 -- any failure means: do not load this step
                log.warning(
                    "checkpoint %s is unreadable or corrupt, skipped: %s: %s",
                    path,
                    type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "",
                )
                if set_aside:
                    self._set_aside(step)
                continue
            what = "the policy of " if policy_only else ""
            log.info("restored %scheckpoint %s (RL step %d)", what, path, record["rl_step"])
            return arrays, record
        return None

    def _set_aside(self, step: int) -> None:
        """Move a damaged step out of Orbax's directory (process 0; the others wait for it)."""
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "checkpoints.damaged")
            storage.makedirs(aside)
            target = os.path.join(aside, str(step))
            if storage.exists(target):  # damaged before: keep both
                target += time.strftime(".%Y%m%d-%H%M%S")
            storage.move(os.path.join(self.directory, str(step)), target)
            log.warning("moved the damaged checkpoint of step %d to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        storage.forget_listings(self.directory)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class HostsDisagree(RuntimeError):
    """The processes of a run see different checkpoints, or some read a step that others cannot:
    restoring different steps would hang the first collective, so every process stops."""


def _gathered(row: list[int]) -> np.ndarray:
    """[process_count, len(row)]: every process's row."""
    if jax.process_count() == 1:
        return np.asarray([row])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(row, np.int64))).reshape(
        jax.process_count(), len(row)
    )


def _same_steps_everywhere(directory: str, steps: list[int]) -> None:
    """Every process lists the same steps, or all stop (a workdir on each host's own disk)."""
    rows = _gathered([len(steps), max(steps, default=-1), sum(steps)])
    if (rows != rows[0]).any():
        seen = "; ".join(
            f"process {p}: {n} step(s), newest {m if m >= 0 else 'none'}"
            for p, (n, m, _) in enumerate(rows.tolist())
        )
        raise HostsDisagree(
            f"the processes see different checkpoints in {directory} ({seen}): the workdir must "
            "be storage every host shares (e.g. gs://...), not each host's own disk"
        )


def _same_files_everywhere(path: str) -> None:
    """Every process sees the same files (names and sizes) in a checkpoint step, or all stop."""
    listing = storage.files(path)
    digest = zlib.crc32(repr(listing).encode())
    rows = _gathered([len(listing), sum(size for _, size in listing), digest])
    if (rows != rows[0]).any():
        seen = "; ".join(
            f"process {p}: {n} files, {b} bytes" for p, (n, b, _) in enumerate(rows.tolist())
        )
        raise HostsDisagree(
            f"the processes see different files in checkpoint {path} ({seen}): stopping every "
            "process rather than restore different steps; the workdir must be storage every host "
            "shares"
        )


def _read_everywhere(path: str, error: Exception | None) -> None:
    """After each process tried to read `path` (error: this one's failure, or None): return when
    all read it or all failed (then the caller skips the step everywhere), raise HostsDisagree
    when only some did."""
    failed = _gathered([int(error is not None)])[:, 0]
    if failed.all() or not failed.any():
        return
    mine = f"; here: {type(error).__name__}: {str(error).splitlines()[0][:300]}" if error else ""
    raise HostsDisagree(
        f"checkpoint {path} was read by processes {np.flatnonzero(~failed.astype(bool)).tolist()} "
        f"but not by {np.flatnonzero(failed).tolist()}{mine}: stopping every process rather than "
        "restore different steps"
    )
