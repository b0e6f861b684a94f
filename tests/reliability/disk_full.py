"""A disk that fills up during a chosen checkpoint save, for the disk-full tests.

    python -m tests.reliability.disk_full last.pt 3 train --no-eval ...   # the CLI, with the 3rd save of
                                                                          # last.pt failing with ENOSPC

The file object a save streams its payload into gets room for `ROOM` bytes; the write that does not fit
raises OSError(ENOSPC), as write(2) does on a full file system. Everything above that (torch.save, the
atomic writer, the training loop, the CLI) runs unchanged.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from generalist_trainer.trainer import checkpoint

ROOM = 4096


class _FullDisk:
    def __init__(self, f: Any, room: int):
        self._f = f
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def fill_disk_on(file_name: str, save_number: int, patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make the `save_number`-th save (1-based) of files named `file_name` hit a full disk.

    `patch`: setattr, or a pytest monkeypatch's setattr so that the test undoes it.
    """
    original_init = checkpoint._HashingWriter.__init__
    saves = 0

    def init(self, f, path):
        nonlocal saves
        if path.name == file_name:
            saves += 1
            if saves == save_number:
                f = _FullDisk(f, ROOM)
        original_init(self, f, path)

    patch(checkpoint._HashingWriter, "__init__", init)


if __name__ == "__main__":
    from generalist_trainer.trainer.cli import main

    fill_disk_on(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
