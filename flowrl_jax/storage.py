"""A run's files on a local disk or on object storage (`gs://bucket/...`), through one layer.

Paths are `etils.epath` paths, as Orbax's own (gs:// goes through fsspec's gcsfs). What object
storage lacks is done the way it allows:
- no rename: a whole-file write is atomic on its own there (one object upload), and a local one is
  written beside and renamed;
- no append (`open('a')` on gcsfs silently starts the object over): `append_text` rewrites the whole
  object;
- no O_EXCL: `create_exclusive` is an upload with the precondition "no object of this name"
  (ifGenerationMatch=0), refused when one exists;
- no directories: `makedirs` does nothing there.

The trainer does not write through it yet (issue #32: workdirs on object storage), so `run.check`
refuses a gs:// workdir in one line. tests/test_storage.py runs each operation on a local directory
and on a real GCS server (fake-gcs-server) on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import tempfile

from etils import epath

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_remote(p) -> bool:
    """Whether `p` names object storage (a URL with a scheme, e.g. gs://) rather than a local path."""
    return bool(_SCHEME.match(str(p)))


def path(p) -> epath.Path:
    return epath.Path(p)


def makedirs(p) -> None:
    """A local directory and its parents; nothing on object storage (it has no directories)."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def write_atomic(p, data: str | bytes) -> None:
    """Write the whole file so that a reader sees the old content or the new one, never a part."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(p):
        path(p).write_bytes(raw)  # one object upload: visible whole or not at all
        return
    directory = os.path.dirname(os.path.abspath(p))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def append_text(p, text: str) -> None:
    """Add `text` at the end of the file (created if absent). On object storage the object is read
    and written again whole: there is no append."""
    if not is_remote(p):
        with open(p, "a") as f:
            f.write(text)
        return
    target = path(p)
    old = target.read_text() if target.exists() else ""
    target.write_text(old + text)


def create_exclusive(p, data: str | bytes) -> bool:
    """Create the file with `data` only if no file of that name exists: True if this call created
    it, False if one was there. Atomic against other processes and hosts."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(p):
        import fsspec

        scheme, _, rest = str(p).partition("://")
        try:
            # A simple (one-request) upload with ifGenerationMatch=0.
            fsspec.filesystem(scheme).pipe_file(rest, raw, mode="create")
        except FileExistsError:
            return False
        return True
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return True
