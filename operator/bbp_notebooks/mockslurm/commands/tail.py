"""tail -c N [--] FILE: the end of a file the user may read (a job's output), as coreutils.

The one non-Slurm utility of the login node, in the only form the operator uses: the file is
opened without following a final symlink and read only when the user's permission bits allow it
(the mock runs as root, so it checks what the kernel would have checked for the user).
"""

from __future__ import annotations

import os
import stat

from bbp_notebooks.mockslurm.commands.base import Context

MAX_BYTES = 1 << 20


def _usage(ctx: Context, message: str) -> int:
    ctx.err(f"tail: {message}\nTry 'tail --help' for more information.\n")
    return 1


def _readable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


async def main(ctx: Context, argv: list[str]) -> int:
    args = [a for a in argv if a != "--"]
    if len(args) != 3 or args[0] != "-c" or not args[1].isdigit():
        return _usage(ctx, "only 'tail -c BYTES [--] FILE' is available here")
    count, name = min(int(args[1]), MAX_BYTES), args[2]
    path = name if os.path.isabs(name) else os.path.join(ctx.user.home, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        reason = error.strerror or "Permission denied"
        ctx.err(f"tail: cannot open '{name}' for reading: {reason}\n")
        return 1
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or not _readable(st, ctx.user.uid, ctx.user.gid):
            ctx.err(f"tail: cannot open '{name}' for reading: Permission denied\n")
            return 1
        handle.seek(max(0, st.st_size - count))
        data = handle.read(count)
    ctx.out(data.decode("utf-8", errors="replace"))
    return 0
