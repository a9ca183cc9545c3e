"""Optuna study storage that parallel workers share safely: SQLite waits for a busy database
instead of failing with "database is locked", and trials whose worker was killed (SIGKILL, the
out-of-memory killer) are marked failed when a worker resumes the study, so they neither stay
RUNNING nor count towards its budget."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

#: seconds a worker waits for another worker's write to a shared SQLite study before giving up
SQLITE_BUSY_S = 300.0


def worker_id() -> str:
    """``host:pid`` of this process (a trial's ``worker`` attribute)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(trial) -> bool:
    """Whether the trial's worker was a process on this host that no longer exists."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        pass
    return False


def sqlite_storage(url: str):
    """Optuna's RDB storage of the SQLite ``url`` with a busy timeout of :data:`SQLITE_BUSY_S`
    (SQLite's own default, 5 s, is shorter than a worker's write under load)."""
    from optuna.storages import RDBStorage

    return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_S}})


def fail_killed_trials(study, name: str) -> int:
    """Mark failed, and not counted (``interrupted``), every RUNNING trial of ``study`` whose worker
    process on this host is gone; returns how many."""
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    killed = [t for t in running if worker_gone(t)]
    for t in killed:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", "its worker was killed")
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if killed:
        log.info(f"study {name}: trial {', '.join(str(t.number) for t in killed)} of a killed worker "
                 "marked failed; the study runs its place again")
    return len(killed)
