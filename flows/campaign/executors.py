"""Where campaign tasks run: a local process pool, or a Ray cluster.

Both executors have the same small interface, used by :mod:`flows.campaign.runner`:
``submit(task)``, ``poll(timeout) -> [(key, ok, result_or_error)]``, ``cancel(key)``,
``running()`` and ``shutdown()``. Both run :func:`flows.campaign.tasks.execute` in a separate
process with one compute thread, so they give identical numbers for the same campaign.

The local pool starts one process per task (from a forkserver that has imported torch once), so
a hung task can be killed on its timeout without losing the pool, and a crashed task (segfault,
out of memory) is reported as that task's failure.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait

from flows.campaign.tasks import Task, execute
from mcel_train.stage import alive, process_start

EXECUTORS = ("local", "ray")


def _die_with_campaign(campaign_pid: int) -> None:
    """End this worker, and every process it started, once the campaign process is gone.

    The worker's parent is the forkserver, not the campaign: a parent-death signal alone
    (PR_SET_PDEATHSIG) left workers training on after a ``kill -9`` or SIGTERM of the campaign,
    and a ``--resume`` started then raced them in the same task folder. So the worker leads a
    process group of its own (its simulator and FINN subprocesses join it) and a thread looks
    twice a second whether the campaign still runs; when not, the whole group is killed. The
    parent-death signal stays, for a forkserver that dies first."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setpgrp()
    started = process_start(campaign_pid)  # the campaign itself, not a later process with its pid

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if not alive(campaign_pid, started):
                os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="campaign-watch", daemon=True).start()


def _child(task_dict: dict, campaign_dir: str, conn, campaign_pid: int) -> None:
    _die_with_campaign(campaign_pid)
    try:
        conn.send((True, execute(task_dict, campaign_dir)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the scheduler
        conn.send((False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()


class LocalExecutor:
    """Up to ``workers`` tasks at a time, each in its own process."""

    def __init__(self, campaign_dir: str, workers: int | None) -> None:
        self.campaign_dir = campaign_dir
        self.workers = workers or os.cpu_count() or 1  # default: one per core
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["flows.campaign.tasks", "torch"])
        self.procs: dict[str, tuple] = {}
        # A hung task is killed with its process group (cancel); the semaphores it held are then
        # freed by multiprocessing's resource tracker, which said so at exit in two lines of
        # "leaked semaphore objects" warnings after the campaign's summary. The tracker starts
        # with this process's -W options, so the filter reaches it.
        quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
        if quiet not in sys.warnoptions:
            sys.warnoptions.append(quiet)

    def capacity(self) -> int:
        return self.workers - len(self.procs)

    def submit(self, task: Task) -> None:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(task.to_dict(), self.campaign_dir, send, os.getpid()),
                                daemon=True)
        proc.start()
        send.close()
        self.procs[task.key] = (proc, recv)

    def poll(self, timeout: float) -> list[tuple[str, bool, object]]:
        if not self.procs:
            time.sleep(timeout)
            return []
        by_sentinel = {p.sentinel: key for key, (p, _) in self.procs.items()}
        ready = wait(list(by_sentinel) + [r for _, r in self.procs.values()], timeout)
        finished = []
        for key, (proc, recv) in list(self.procs.items()):
            if proc.sentinel not in ready and recv not in ready:
                continue
            message = None
            try:
                if recv.poll():
                    message = recv.recv()
            except (EOFError, OSError):
                message = None
            proc.join(timeout=30)
            if message is None:
                if proc.is_alive():  # pipe readable but no message yet: look again next poll
                    continue
                message = (False, f"worker died with exit code {proc.exitcode} (killed or crashed)")
            recv.close()
            del self.procs[key]
            finished.append((key, *message))
        return finished

    def cancel(self, key: str) -> None:
        proc, recv = self.procs.pop(key)
        try:  # the worker and what it started (its process group: _die_with_campaign)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.join()
        recv.close()

    def running(self) -> list[str]:
        return list(self.procs)

    def shutdown(self) -> None:
        for key in list(self.procs):
            self.cancel(key)


class RayExecutor:
    """Tasks as Ray remote functions on a local Ray instance or the cluster at ``address``.

    The workers read and write the campaign folder, so on a multi-node cluster it must be on a
    shared file system mounted at the same path on every node.
    """

    def __init__(self, campaign_dir: str, workers: int | None, address: str | None = None) -> None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            from mcel_train.errors import ToolMissingError

            raise ToolMissingError("--executor ray needs the ray package: pip install 'ray==2.60.0'")
        if address:
            ray = connect_ray(address)
            # default: one task per CPU of the whole cluster, not of this machine
            workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        else:
            import ray

            workers = workers or os.cpu_count() or 1
            if not ray.is_initialized():
                # a Ray instance of its own: without an address, ray.init joins a cluster already
                # running on this machine, and then refuses num_cpus (--address joins one)
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.campaign_dir = campaign_dir
        self.workers = workers
        self.remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        self.refs: dict = {}

    def capacity(self) -> int:
        return self.workers - len(self.refs)

    def submit(self, task: Task) -> None:
        self.refs[self.remote.remote(task.to_dict(), self.campaign_dir)] = task.key

    def poll(self, timeout: float) -> list[tuple[str, bool, object]]:
        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                finished.append((key, True, self.ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the task's exception
                finished.append((key, False, f"{type(exc).__name__}: {exc}"))
        return finished

    def cancel(self, key: str) -> None:
        for ref, k in list(self.refs.items()):
            if k == key:
                self.ray.cancel(ref, force=True)
                del self.refs[ref]

    def running(self) -> list[str]:
        return list(self.refs.values())

    def shutdown(self) -> None:
        for key in self.running():
            self.cancel(key)
        self.ray.shutdown()


def connect_ray(address: str):
    """Join the cluster at ``address``; returns the ``ray`` module.

    Ray 2.60's ``ray start --head`` turns token authentication on where a token exists
    (``~/.ray/auth_token``) or ``RAY_AUTH_MODE=token`` is set, and off otherwise; every node and
    driver must then run in the cluster's mode (README, 'Campaigns on a Ray cluster'), which Ray
    reads when it is imported. So unless the user chose a mode, a join is probed in a child
    process with Ray's default, then in token mode, and this process imports Ray in the mode
    that joined. A dead address or a refused connection is one line, before any campaign state
    exists.
    """
    from mcel_train.errors import UserInputError

    given = address
    if address != "auto":  # "auto": the cluster `ray start` left on this machine, found by Ray itself
        # HOST:PORT of the cluster's GCS, or ray://HOST:PORT of its client server
        scheme = "ray://" if address.startswith("ray://") else ""
        host, _, port = address.removeprefix("ray://").rpartition(":")
        address = f"{scheme}{host or '127.0.0.1'}:{port}"  # ":6379" is this machine's port, for Ray too
        try:  # Ray itself retries an unreachable address for minutes
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserInputError(f"--address {given}: no Ray cluster answers there ({exc}); start one with "
                                 "`ray start --head --port=PORT` and give HOST:PORT, ray://HOST:PORT or auto "
                                 "(README, 'Campaigns on a Ray cluster')") from None
    # in a child with a time limit: Ray retries a port that is not its own. The cluster's
    # authentication mode is not known beforehand: `ray start --head` turns token auth on only
    # where a token exists (~/.ray/auth_token, which a local Ray run makes), so without a
    # RAY_AUTH_MODE of the user's, Ray's default is tried first and token mode second
    problem = _join_problem(address)
    if problem and "RAY_AUTH_MODE" not in os.environ and _AUTH_WORDS in problem:
        os.environ["RAY_AUTH_MODE"] = "token"
        problem = _join_problem(address)
        if problem:
            del os.environ["RAY_AUTH_MODE"]
    if problem:
        raise UserInputError(f"--address {given}: {problem}")
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)  # no INFO lines
    except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, ...
        ray.shutdown()
        raise UserInputError(f"--address {given}: {_ray_problem(str(exc) or type(exc).__name__)}") from None
    return ray


JOIN_TIMEOUT_S = 60  # a driver joins a live cluster in seconds; something else on the port never answers
_JOIN_PROBE = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"


_AUTH_WORDS = "cannot join the Ray cluster with"


def _ray_problem(text: str) -> str:
    """Ray's own error text as the cause and the fix, in one sentence: an authentication mode
    that is not the cluster's, or no cluster at all."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[-1] if lines else "no message"
    if len(first) > 300:  # cut at a word, not in one
        first = first[:300].rsplit(" ", 1)[0] + " ..."
    if any(w in text.lower() for w in ("auth", "token", "unauthenticated", "permission denied")):
        return (f"{_AUTH_WORDS} RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', '(unset)')} ({first}); "
                "set RAY_AUTH_MODE to the cluster's mode, with its token in ~/.ray/auth_token for token mode "
                "(README, 'Campaigns on a Ray cluster')")
    return (f"cannot join a Ray cluster there ({first}); start one with `ray start --head --port=PORT` and "
            "give its HOST:PORT (README, 'Campaigns on a Ray cluster')")


def _join_problem(address: str) -> str | None:
    """Why a driver cannot join the cluster at ``address`` (``None``: it can), found by joining
    from a child process that is given :data:`JOIN_TIMEOUT_S`: ``ray.init`` on a port where
    something other than Ray listens retries for many minutes, printing only warnings."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _JOIN_PROBE, address], capture_output=True, text=True,
                              timeout=JOIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return (f"nothing that answers as a Ray cluster within {JOIN_TIMEOUT_S} s (another program on that "
                "port? give the port `ray start --head --port=PORT` was given, not the dashboard's)")
    return None if done.returncode == 0 else _ray_problem(done.stderr)


def make_executor(kind: str, campaign_dir: str, workers: int | None,
                  address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor named ``kind`` (``local`` or ``ray``), running ``workers`` tasks at a time."""
    if kind == "local":
        if address:
            from mcel_train.errors import UserInputError

            raise UserInputError(f"--address {address} names a Ray cluster: add --executor ray (the local pool "
                                 "runs on this machine only)")
        return LocalExecutor(campaign_dir, workers)
    if kind == "ray":
        return RayExecutor(campaign_dir, workers, address)
    from mcel_train.errors import UserInputError

    raise UserInputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
