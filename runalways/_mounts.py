"""Which file system a file lives on, its mount options, and what is known of its locks there.

Used by ``runalways doctor`` alone, never by a start: reading ``/proc/self/mountinfo`` costs
more than a cron start should pay, and no start could act on it anyway. The table of risks
says why a file system is known to keep locks badly; whether a lock really excludes a second
process here is for the doctor's probe to see, since no mount option tells it for sure.
"""

from __future__ import annotations

import os

#: Kinds of file system whose locks are kept by the kernel of this host, for its processes:
#: what the local backends promise. Anything not named here or below is unknown, not wrong.
LOCAL = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs", "overlay"}
)

#: statfs(2)'s f_type of the kinds the table names, for a mount /proc does not show.
MAGIC = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x6A656A63: "virtiofs",
    0x794C7630: "overlay",
    0x00C36400: "ceph",
}


class Mount:
    """One line of /proc/self/mountinfo: where, what kind, from where, and with which options."""

    __slots__ = ("fstype", "mount_point", "options", "source")

    def __init__(self, mount_point: str, fstype: str, source: str, options: tuple[str, ...]) -> None:
        self.mount_point = mount_point
        #: As the kernel names it: ``ext4``, ``nfs4``, ``fuse.sshfs``.
        self.fstype = fstype
        self.source = source
        #: The mount's own options, then the super block's.
        self.options = options

    def option(self, name: str) -> str | None:
        """The value of option ``name`` (``""`` for a bare flag), or None when it is not set."""
        for option in self.options:
            key, _, value = option.partition("=")
            if key == name:
                return value
        return None


def _unescape(field: str) -> str:
    # mountinfo writes a space, tab, newline and backslash in a path as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> Mount | None:
    """The mount ``path`` lives on (the longest mount point holding it, on its device), or None
    when /proc does not say (no /proc, another system than Linux)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
            table = lines.read().splitlines()
        device = os.stat(path).st_dev
    except OSError:
        return None
    resolved = os.path.realpath(path)
    best: Mount | None = None
    for line in table:
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = (int(number) for number in fields[2].split(":"))
        except ValueError:
            continue
        point = _unescape(fields[4])
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if not inside or os.makedev(major, minor) != device:
            continue
        # Later lines are mounted over earlier ones at the same point: the last one wins.
        if best is None or len(point) >= len(best.mount_point):
            options = (*fields[5].split(","), *fields[separator + 3].split(","))
            best = Mount(point, fields[separator + 1], _unescape(fields[separator + 2]), options)
    return best


def statfs_kind(path: str) -> str | None:
    """The kind of file system statfs(2) reports for ``path``, where the table above knows its magic."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    # struct statfs starts with f_type, a long on Linux; the rest is room the call fills in.
    buffer = ctypes.create_string_buffer(256)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    magic = ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF
    return MAGIC.get(magic, f"0x{magic:x}")


def risks(mount: Mount) -> list[tuple[str, str, str]]:
    """What is known of the locks of ``mount``'s kind: ``(level, why, what to do)`` each.

    ``level`` is ``warning``: these say what the kind of file system is known to do; only
    the probe of a second process says whether a lock excludes here.
    """
    kind = mount.fstype
    found: list[tuple[str, str, str]] = []
    network = "run the job's copies on one host, or use a cluster backend (postgres, redis) across hosts"
    if kind in ("nfs", "nfs4"):
        local_lock = mount.option("local_lock")
        if mount.option("nolock") is not None or local_lock in ("all", "flock", "posix"):
            how = "nolock" if mount.option("nolock") is not None else f"local_lock={local_lock}"
            found.append(
                (
                    "warning",
                    f"NFS mounted {how}: "
                    "locks are kept on this host alone, and copies on other hosts sharing the file are not excluded",
                    network,
                )
            )
        else:
            found.append(
                (
                    "warning",
                    "NFS: locks go to the server (flock is emulated with a POSIX lock); a client that loses its "
                    "lease or a server that restarts can lose a held lock without its holder knowing",
                    "keep the lock file on a local disk (RUNALWAYS_DIR) or use a cluster backend (postgres, redis)",
                )
            )
    elif kind in ("cifs", "smb3", "smb2"):
        if mount.option("nobrl") is not None:
            found.append(
                (
                    "warning",
                    "SMB mounted nobrl: byte-range locks are not sent to the server, other clients are not excluded",
                    network,
                )
            )
        else:
            found.append(("warning", "SMB: flock is kept on this host alone; POSIX locks go to the server", network))
    elif kind == "virtiofs":
        found.append(
            (
                "warning",
                "virtiofs (Docker Desktop's file sharing, virtiofsd): without flock support in the daemon, "
                "flock succeeds without locking (docker/for-mac#7004); processes on the other side are never excluded",
                "keep the lock file inside the container or VM (RUNALWAYS_DIR on a local file system)",
            )
        )
    elif kind == "9p":
        found.append(
            (
                "warning",
                "9p: some servers grant every lock without keeping it (kata-containers#3408); processes on "
                "the other side of the share are never excluded",
                "keep the lock file inside the guest (RUNALWAYS_DIR on a local file system)",
            )
        )
    elif kind in ("ceph", "glusterfs", "lustre", "gpfs", "afs", "ocfs2", "gfs2") or kind.startswith("fuse.gluster"):
        found.append(("warning", f"{kind}: a shared file system; how its locks hold depends on its servers", network))
    return found
