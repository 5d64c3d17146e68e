"""A file replaced whole: the old one or the new one after a crash, never half of one.

The record of a period (``runalways._period``) and a job's metrics file (``runalways._metrics``)
are both read by others at any moment, and both are rewritten whole. Written in place, a
reader (or a crash) could catch a file half written; so the new content goes to a temporary
file beside it, reaches the disk, and is renamed over the old one: a rename within one
directory is atomic.
"""

import os


def replace_file(path: str, data: bytes, temporary: str, mode: int) -> None:
    """Make ``data`` the content of ``path``, through the file ``temporary`` in the same directory.

    ``temporary`` is created (or emptied) with ``mode``, whatever the umask, never through a
    symbolic link; it is removed when anything fails.
    """
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            # A file another user reads (the metrics' collector runs as prometheus) must be
            # readable whatever the writer's umask; a private one must stay private.
            os.fchmod(descriptor, mode)
            while data:
                data = data[os.write(descriptor, data) :]
            # On disk before the rename: after a crash, the old file or the new one, never an
            # empty one in its place (a record forgotten, counters starting again from 0).
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
