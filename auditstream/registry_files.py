"""How the model registry opens the files it reads: ``LIVE``, ``card.json``, ``model.onnx``.

Every one of them is opened without blocking (``O_NONBLOCK``: a FIFO in its place would
otherwise wait for a writer for ever, and a hot reload would stay "loading" for good), must then
be a regular file by ``fstat`` (a symlink to one is fine; a symlink to ``/dev/zero``, a FIFO, a
socket, a device or a directory is refused) and is read up to a size cap, never whole: an 8 GiB
sparse file would otherwise be read into memory before any check looked at it. Each refusal is
one :class:`~auditstream.errors.ModelRefused` line saying what the file is and what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from auditstream.errors import ModelRefused

__all__ = ["MAX_ONNX_BYTES", "open_regular", "read_regular"]

# model.onnx: protobuf refuses to parse a message of 2 GiB or more, so a larger file is no model.
MAX_ONNX_BYTES = 2**31 - 1

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path | str, what: str, fix: str) -> BinaryIO:
    """``path`` opened for reading, checked to be a regular file (after following symlinks).

    ``what`` names the file in the refusal (``"model.onnx"``), ``fix`` says what to do about it.
    A missing file raises :class:`FileNotFoundError` (the caller knows whether that is normal);
    anything else that is not a readable regular file is a :class:`ModelRefused`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except PermissionError as e:
        raise ModelRefused(path, f"{what} cannot be opened ({e.strerror or e}); give this user read access") from None
    except OSError as e:  # no permission, a socket (ENXIO), a loop of symlinks...
        raise ModelRefused(path, f"{what} cannot be opened ({e.strerror or e}); {fix}") from None
    try:
        mode = os.fstat(fd).st_mode  # of what was opened: no window for a swap after a stat of the path
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise ModelRefused(path, f"{what} cannot be read: it is {kind}, not a regular file (the registry reads only "
                               f"regular files; a symlink to one is fine); {fix}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, limit: int, what: str, fix: str) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), refused when there are
    more than ``limit``: what is read is at most the file's size when opened plus one byte, and
    never more than ``limit`` plus one, even if the file grows meanwhile."""
    with open_regular(path, what, fix) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ModelRefused(path, f"{what} is over {limit:,} bytes ({size:,}); {fix}")
        try:
            data = f.read(size + 1)  # one past the size: notices a file that grew since
            if len(data) > size:
                data += f.read(limit + 1 - len(data))
        except OSError as e:
            raise ModelRefused(path, f"{what} cannot be read ({e.strerror or e}); {fix}") from None
    if len(data) > limit:
        raise ModelRefused(path, f"{what} is over {limit:,} bytes (it grew while it was read); {fix}")
    return data
