"""What the entry points share. The absl ones (`python -m flowrl_jax.train`, `flowrl_jax.compare`):
the --config and --workdir flags, and bad input reported as one line with exit status 2 instead
of a traceback (FLOWRL_JAX_TRACEBACK=1 shows the traceback). The argparse ones (`evaluate`,
`export`): --mesh."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import NoReturn

from absl import flags
from ml_collections import config_flags

from flowrl_jax import mesh as mesh_lib

WORKDIR = flags.DEFINE_string("workdir", None, "run directory (overrides config.workdir)")


def setup_logging() -> None:
    """INFO lines of ours; libraries that log every file they touch at INFO only warn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in (
        "absl",  # Orbax: every file it writes
        "jax._src.xla_bridge",  # "no TPU" on every start
        "jax._src.compilation_cache",  # each reset of the cache
        "gcsfs",  # each object read (gs:// workdirs)
        "fsspec",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def prog() -> str:
    """The running entry point as `python -m` names it (flowrl_jax.train, flowrl_jax.compare)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else "flowrl_jax"


# What a bad config, bad data, a busy or foreign workdir or a missing checkpoint raise before
# training starts: printed as one line (exit status 2), not a traceback. FLOWRL_JAX_TRACEBACK=1
# shows the traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, RuntimeError)


def fail(text: str) -> NoReturn:
    """One line on stderr, exit status 2 (a usage error)."""
    print(f"{prog()}: error: {text}", file=sys.stderr)
    sys.exit(2)


def message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def define_config_flag(argv: list[str], which: str = ""):
    """--config, by default flowrl_jax/config.py[:which]. ml_collections applies the --config.*
    overrides of argv as it defines the flag: a key that does not exist, a config file that cannot
    be loaded or an override before --config=FILE fails here, as one line that names the
    argument."""
    try:
        return config_flags.DEFINE_config_file(
            "config",
            os.path.join(os.path.dirname(__file__), "config.py") + (f":{which}" if which else ""),
            "ml_collections config file",
            sys_argv=argv,
        )
    except Exception as e:  # noqa: BLE001 -- whatever ml_collections raises, the user's input is bad
        config_error(e, argv)


def config_error(e: Exception, argv: list[str]) -> NoReturn:
    """A config that does not load, or an override of a key it lacks, as one line."""
    if os.environ.get("FLOWRL_JAX_TRACEBACK"):
        raise e
    text = message(e).encode().decode("unicode_escape")  # KeyError reprs its message
    missing = re.fullmatch(r"""\W*'(\w+)'\s*(?:Did you mean "(\w+)".*)?\W*""", text.strip())
    if missing:
        key, close = missing.groups()
        given = [a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        hint = f"; did you mean {close!r}?" if close else " (see flowrl_jax/config.py for the keys)"
        fail(f"{given[0] if given else key}: no such key {key!r}{hint}")
    fail(f"bad --config: {' '.join(text.split())}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, a bad value (--config.rollout.n=abc) or key as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(message(e))
    except Exception as e:  # noqa: BLE001 -- a --config=FILE's overrides apply while parsing
        config_error(e, argv)


def init_distributed(enabled: bool, coordinator_address="", num_processes=0, process_id=-1):
    """jax.distributed.initialize, as every entry point does it (train's config.distributed, the
    argparse CLIs' --distributed flags): on TPU pods it needs no arguments; on GPU clusters and CPU
    processes, the coordinator (host:port), the process count and this process's id."""
    if not enabled:
        return
    import jax

    # CPU processes need a collectives backend to talk to each other (GPUs and TPUs have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address:
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    jax.distributed.initialize(**kwargs)


def add_distributed_args(parser) -> None:
    """An argparse CLI's flags for several hosts, as train's config.distributed keys."""
    group = parser.add_argument_group("several hosts (as train's --config.distributed.*)")
    group.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize first"
    )
    group.add_argument("--coordinator_address", default="", help="host:port (GPU / CPU clusters)")
    group.add_argument("--num_processes", type=int, default=0)
    group.add_argument("--process_id", type=int, default=-1)


def distributed_from_args(args) -> None:
    init_distributed(
        args.distributed, args.coordinator_address, args.num_processes, args.process_id
    )


def mesh_arg(parser, text: str):
    """An argparse CLI's --mesh (evaluate, export) as a Mesh over every device (None when not given); a bad one is a usage error."""
    if not text:
        return None
    try:
        return mesh_lib.make_mesh(mesh_lib.parse_shape(text))
    except ValueError as e:
        parser.error(f"--mesh: {e}")
