"""The demo's temporary folders, and the removal of those a killed demo left behind.

Each run of ``batchflow demo`` keeps its data (the SQLite file, the exported files, the embedded
Redis's folder) in a folder of its own, removed when it stops. A demo killed outright (SIGKILL)
cannot remove it, so every run's folder is named after its demo's pid (``<pid>-<random>``), in a
parent folder of this user's (``$TMPDIR/batchflow-demo-runs-<uid>``, mode 0700), and each new run
first removes the folders whose demo is no longer running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile


def runs_folder() -> str | None:
    """The parent folder of every run's folder, created if needed; None when it cannot be
    trusted (it belongs to someone else, or is a symlink): runs then go straight into $TMPDIR and
    nothing is removed."""
    path = os.path.join(tempfile.gettempdir(), f"batchflow-demo-runs-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_runs(parent: str) -> list[str]:
    """Remove the folders in ``parent`` whose demo (the pid their name starts with) is no longer
    running; returns those removed. A folder is never removed under a live demo: if a dead demo's
    pid has been reused since, its folder waits until that process ends too."""
    removed = []
    for name in sorted(os.listdir(parent)):
        pid = name.partition("-")[0]
        path = os.path.join(parent, name)
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def new_run_folder() -> tuple[str, list[str]]:
    """A new folder for this run (named after this process), after removing the folders of
    demos no longer running; returns it and the folders removed."""
    parent = runs_folder()
    removed = remove_dead_runs(parent) if parent is not None else []
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent), removed
