"""A run's files on a local disk or on object storage (`gs://bucket/...`), through one layer.

Remote paths go through fsspec's gcsfs (as etils.epath, Orbax's path layer, does). Every file of a
run goes through here (Orbax's arrays through its own tensorstore / epath path), so a workdir may be
a local path or gs://. What object storage lacks is done the way it allows:
- no rename: a whole-file write is atomic on its own there (one object upload), and a local one is
  written beside and renamed; `move` copies a tree and deletes the source (a checkpoint set aside);
- no append (`open('a')` on gcsfs silently starts the object over): `append_text` rewrites the whole
  object;
- no O_EXCL: `create_exclusive` is an upload with the precondition "no object of this name"
  (ifGenerationMatch=0), refused when one exists;
- no directories: `makedirs` does nothing there;
- listings are cached by gcsfs: every call here drops them first, since another host may have
  written since.

tests/test_storage.py runs each operation on a local directory and on a real GCS server
(fake-gcs-server) on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from etils import epath

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_remote(p) -> bool:
    """Whether `p` names object storage (a URL with a scheme, e.g. gs://) rather than a local path."""
    return bool(_SCHEME.match(str(p)))


def path(p) -> epath.Path:
    return epath.Path(p)


def absolute(p) -> str:
    """A local path made absolute (a job's children may start elsewhere); a URL as it is."""
    return str(p) if is_remote(p) else os.path.abspath(p)


def _fs(p):
    """(fsspec filesystem, path without the scheme) of a remote path, listings fresh."""
    import fsspec

    scheme, _, rest = str(p).partition("://")
    forget_listings(p)
    return fsspec.filesystem(scheme), rest.rstrip("/")


def forget_listings(p) -> None:
    """Drop the listings every fsspec filesystem of `p`'s scheme has cached (ours, and the one
    etils.epath made for Orbax): another host, or a move here, may have changed them. Nothing on a
    local path."""
    if not is_remote(p):
        return
    import fsspec

    cls = fsspec.get_filesystem_class(str(p).partition("://")[0])
    for fs in list(getattr(cls, "_cache", {}).values()):
        fs.invalidate_cache()


def exists(p) -> bool:
    if not is_remote(p):
        return os.path.exists(p)
    fs, rest = _fs(p)
    return fs.exists(rest)


def listdir(p) -> list[str]:
    """The names directly under `p` ([] where there is nothing), sorted."""
    if not is_remote(p):
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    fs, rest = _fs(p)
    try:
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(rest, detail=False)})
    except FileNotFoundError:
        return []


def files(p) -> list[tuple[str, int]]:
    """Every file under `p`: (path relative to it, size in bytes), sorted."""
    if not is_remote(p):
        return sorted(
            (os.path.relpath(os.path.join(d, f), p), os.path.getsize(os.path.join(d, f)))
            for d, _, names in os.walk(p)
            for f in names
        )
    fs, rest = _fs(p)
    found = fs.find(rest, detail=True)
    return sorted(
        (name[len(rest) + 1 :], int(info["size"]))
        for name, info in found.items()
        if info.get("type") != "directory"
    )


def read_text(p) -> str:
    if not is_remote(p):
        with open(p) as f:
            return f.read()
    fs, rest = _fs(p)
    return fs.cat_file(rest).decode()


def modified(p) -> float:
    """When the file was last written (seconds since the epoch)."""
    if not is_remote(p):
        return os.path.getmtime(p)
    fs, rest = _fs(p)
    return fs.modified(rest).timestamp()


def remove(p) -> None:
    """Delete a file; one that is already gone is not an error."""
    try:
        if is_remote(p):
            fs, rest = _fs(p)
            fs.rm_file(rest)
        else:
            os.remove(p)
    except FileNotFoundError:
        pass


def rmtree(p) -> None:
    """Delete a tree (or a file); one that is not there is not an error."""
    if not is_remote(p):
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            remove(p)
        return
    fs, rest = _fs(p)
    if fs.exists(rest):
        fs.rm(rest, recursive=True)


def move(source, target) -> None:
    """Move a file or a tree. On object storage: copied, then the source deleted."""
    if not is_remote(source):
        shutil.move(source, target)
        return
    fs, src = _fs(source)
    fs.copy(src, _fs(target)[1], recursive=True)
    fs.rm(src, recursive=True)


def upload(local, target) -> None:
    """A local file, or every file of a local tree, copied to the same name under `target` (on
    object storage each object appears whole; a local target is a plain copy)."""
    pairs = (
        [(os.path.join(local, rel), os.path.join(target, rel)) for rel, _ in files(local)]
        if os.path.isdir(local)
        else [(local, target)]
    )
    for source, dest in pairs:
        if is_remote(dest):
            fs, rest = _fs(dest)
            fs.put_file(source, rest)  # streamed (a checkpoint shard is GBs), visible once whole
        else:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(source, dest)


def write_figure(fig, p, dpi: int) -> None:
    """A matplotlib figure saved as PNG to `p`, whole (savefig itself writes local files only)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomic(p, buffer.getvalue())


def makedirs(p) -> None:
    """A local directory and its parents; nothing on object storage (it has no directories)."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def write_atomic(p, data: str | bytes) -> None:
    """Write the whole file so that a reader sees the old content or the new one, never a part."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(p):
        fs, rest = _fs(p)
        fs.pipe_file(rest, raw)  # one object upload: visible whole or not at all
        return
    directory = os.path.dirname(os.path.abspath(p))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a run's files are meant to be read by others
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
    old = read_text(p) if exists(p) else ""
    write_atomic(p, old + text)


def create_exclusive(p, data: str | bytes) -> bool:
    """Create the file with `data` only if no file of that name exists: True if this call created
    it, False if one was there. Atomic against other processes and hosts."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(p):
        fs, rest = _fs(p)
        try:
            # A simple (one-request) upload with ifGenerationMatch=0.
            fs.pipe_file(rest, raw, mode="create")
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
