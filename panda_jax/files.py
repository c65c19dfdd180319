"""Writing output files safely: atomically, under unique temporary names, with the user's umask.

Every file a stage writes (record shards, merged records, clip videos) goes through
`atomic_output`: it is written to a temporary file beside its target and renamed into place
only when complete, so a killed run leaves the old file or the new one, never half of one.
Whole folders (checkpoints) go through `atomic_directory` the same way. Temporary names are
unique per host, process and call, so two runs writing into one folder never share one;
`remove_orphans` deletes what killed processes of this host left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file
_FOLDER_MODE = 0o777 & ~_UMASK  # what mkdir() would give a new folder
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
# .<name>.<host>-<pid>.<random>.tmp<suffix>
_TEMPORARY = re.compile(r"^\..*\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp(\.[^.]*)?$")


class AtomicFile:
    """A temporary file beside `path` that becomes `path` on `commit()`; `discard()` removes it.

    The temporary name keeps the suffix (muxers choose the container by it).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.stem}.{_HOST}-{os.getpid()}."
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        self.temporary = Path(name)

    def commit(self) -> None:
        os.chmod(self.temporary, _FILE_MODE)  # mkstemp makes files private (0600)
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; it becomes `path` when the block ends without error.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    file = AtomicFile(path)
    try:
        yield file.temporary
        file.commit()
    except BaseException:
        file.discard()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside `path`; it becomes `path` when the block ends without error.

    A reader never sees half a folder. If a folder appeared at `path` meanwhile (another writer
    got there first), that one is kept and this one removed. On an exception the temporary
    folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_HOST}-{os.getpid()}."
    temporary = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    os.chmod(temporary, _FOLDER_MODE)  # mkdtemp makes folders private (0700)
    try:
        os.rename(temporary, path)  # fails if `path` is a folder with something in it
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not path.is_dir():
            raise


def remove_orphans(folder: str | os.PathLike) -> int:
    """Deletes temporary files and folders in `folder` left by processes of this host that no longer run."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity(path: str | os.PathLike) -> dict[str, object]:
    """What says a file is unchanged: its absolute path, size and modification time."""
    path = Path(path).absolute()
    try:
        stat = path.stat()
    except OSError as e:
        return {"path": str(path), "missing": type(e).__name__}
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
