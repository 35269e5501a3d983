"""`RewardWorkers`: score rewards in persistent worker processes, with a wall-time limit per response.

A reward function is user code. In the trainer's process, one that hangs (a regex that backtracks
for hours, a stuck network call, a symbolic simplification that never ends) stops the run, and a
slow one keeps the accelerator idle. `reward.workers=N` scores the batch's responses in N
processes, one response at a time each. A worker that spends more than `reward.timeout_s` on one
response, or dies, is killed and replaced; that response scores `on_error` in every component and
is counted, like a reward that raises.

Workers are fresh interpreters (`python -m rllava.rewards.workers`), not forks of the trainer: they
hold no model, no CUDA context and no OpenMP pool, and they import only the reward registry, plus
the config's plugin files when a reward is registered there. A reward that exists only in the
calling script's `__main__` cannot reach them: put it in a plugin file or name it `file.py:fn`.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Optional

from rllava.config import ConfigError
from rllava.rewards.combine import RewardFunction, check_lengths

logger = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 300.0  # a worker's start-up (plugin imports included) before it counts as broken


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self, init: tuple):
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # rllava importable even when not installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # Its own session (and process group): stopping it also ends whatever its reward started (a checker, a
        # sandboxed run of the response), which would otherwise outlive the killed worker.
        self.proc = subprocess.Popen([sys.executable, "-m", "rllava.rewards.workers", str(theirs.fileno()), str(os.getpid())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(init)
        self.started = time.monotonic()
        self.ready = False
        self.job: Optional[tuple[int, float]] = None  # (response index, start time)
        self.seen: set[int] = set()  # meta keys this worker holds for the current call

    def stop(self) -> Optional[int]:
        """Kill the worker's whole process group: the worker and anything its reward left running; its exit status."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:  # the group is empty already (or, oddly, not ours): the worker itself at least
            if self.proc.poll() is None:
                self.proc.kill()
        code = self.proc.wait()
        self.conn.close()
        return code


class RewardWorkers:
    """`RewardFunction`'s twin that scores in `workers` processes; same call, same results."""

    def __init__(self, functions: dict[str, float], on_error: float = 0.0, workers: int = 2,
                 timeout_s: Optional[float] = None, plugins: Optional[list[str]] = None,
                 kwargs: Optional[dict[str, dict]] = None, by_source: Optional[dict[str, dict[str, float]]] = None,
                 accuracy_key: str = "accuracy"):
        # Names are resolved here first: errors come before any spawn.
        self.local = RewardFunction(functions, on_error, kwargs, by_source, accuracy_key)
        self.timeout_s = timeout_s
        self._init = (dict(functions), float(on_error), [str(Path(p).resolve()) for p in plugins or []],
                      dict(kwargs or {}), dict(by_source or {}), accuracy_key)
        self._workers = [_Worker(self._init) for _ in range(workers)]
        self._calls = 0
        self.n_timeouts = 0  # responses over timeout_s, over the whole run
        self.n_crashes = 0  # responses whose worker died
        self._results: list[Optional[tuple[float, dict]]] = []  # the current call's, by response index
        self._metas: list[dict[str, Any]] = []  # the current call's prompt metadata, by response index
        self._errors = 0  # the current call's failed components and lost responses
        self._failed: list[list[str]] = []  # the current call's failed components, by response index
        try:
            while not all(w.ready for w in self._workers):
                self._receive([w for w in self._workers if not w.ready], self._next_deadline())
                self._kill_overdue()
        except BaseException:
            self.close()
            raise

    def __call__(self, responses: list[str], prompts_meta: list[dict[str, Any]]) -> tuple[list[float], list[dict], int]:
        """Score each response against its prompt's metadata: (scores, infos, failed components + lost responses)."""
        check_lengths(responses, prompts_meta)
        self._calls += 1
        self._metas = prompts_meta
        key_of: dict[int, int] = {}  # the n samples of a prompt share one meta dict: send it once per worker
        keys = [key_of.setdefault(id(m), len(key_of)) for m in prompts_meta]
        for w in self._workers:
            w.seen = set()
        self._results, self._errors, self._failed = [None] * len(responses), 0, [[] for _ in responses]
        todo: dict[int, deque[int]] = {}  # meta key -> its responses not sent yet
        owner: dict[int, _Worker] = {}  # meta key -> the worker that scores its responses
        for i, k in enumerate(keys):
            todo.setdefault(k, deque()).append(i)
        while todo or any(w.job for w in self._workers):
            for w in list(self._workers):
                if w.ready and w.job is None and todo:
                    # A prompt's samples go to one worker where possible: its caches (sympy's, a parsed gold
                    # answer) stay warm, and the meta travels once.
                    key = next((k for k in todo if owner.get(k) is w), None)
                    if key is None:
                        key = next((k for k in todo if k not in owner), next(iter(todo)))
                        owner[key] = w
                    i = todo[key].popleft()
                    if not todo[key]:
                        del todo[key]
                    meta = None if keys[i] in w.seen else prompts_meta[i]
                    w.job = (i, time.monotonic())
                    try:
                        w.conn.send((self._calls, i, responses[i], keys[i], meta))
                    except OSError:  # died while idle (killed from outside): its new response is lost
                        self._replace(w, "crashed")
                        continue
                    w.seen.add(keys[i])
            self._receive([w for w in self._workers if w.job or not w.ready], self._next_deadline())
            self._kill_overdue()
        results = self._results
        for (_, info), names in zip(results, self._failed):  # as in-process: a failed accuracy reporter counts as 0
            self.local.zero_failed_accuracy(info, names)
        return [r[0] for r in results], [r[1] for r in results], self._errors

    def _next_deadline(self) -> Optional[float]:
        ends = [w.started + BOOT_TIMEOUT_S for w in self._workers if not w.ready]
        if self.timeout_s is not None:
            ends += [w.job[1] + self.timeout_s for w in self._workers if w.job]
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _receive(self, waiting: list[_Worker], timeout: Optional[float]) -> None:
        """Handle every message (or death) among `waiting` that arrives within `timeout` seconds."""
        by_conn = {w.conn: w for w in waiting}
        for conn in wait(list(by_conn), timeout):
            w = by_conn[conn]
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self._replace(w, "crashed")
                continue
            if msg[0] == "ready":
                w.ready = True
            elif msg[0] == "init_error":
                raise ConfigError(f"reward worker: {msg[1]}")
            else:
                _, i, total, info, failures, reports = msg
                self.local.log_failures(failures, self._metas[i])
                for name, keys in reports.items():  # which components report accuracy: learnt in the workers
                    self.local.reports.setdefault(name, set()).update(keys)
                self._results[i] = (total, info)
                self._failed[i] = [name for name, _ in failures]
                self._errors += len(failures)
                w.job = None

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.job and self.timeout_s is not None and now - w.job[1] > self.timeout_s:
                self._replace(w, "timed out")
            elif not w.ready and now - w.started > BOOT_TIMEOUT_S:
                raise RuntimeError(f"a reward worker did not start within {BOOT_TIMEOUT_S:.0f} s")

    def _replace(self, w: _Worker, why: str) -> None:
        """Kill `w`, score its response as failed, and start a fresh worker in its place."""
        code = None
        if why == "crashed":  # its socket closes as it exits: wait for the exit to read its real status
            try:
                code = w.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # alive with its socket closed: the kill below gives the status
                pass
        killed = w.stop()
        code = killed if code is None else code
        if w.job is None:  # died while idle or booting: nothing to score, but something is wrong
            raise RuntimeError(f"a reward worker exited (status {code}) outside scoring; see its output above")
        meta = self._metas[w.job[0]]
        self._results[w.job[0]] = self.local.failed(meta)
        self._failed[w.job[0]] = list(self.local.weights_for(meta))
        self._errors += 1
        if why == "timed out":
            self.n_timeouts += 1
        else:
            self.n_crashes += 1
        if self.n_timeouts + self.n_crashes == 1:
            limit = f" after {self.timeout_s:g} s" if why == "timed out" else f" (status {code})"
            logger.warning("reward scoring %s%s on a response: scored %s, worker replaced (further cases counted "
                           "in reward/timeouts_total and reward/crashes_total, not logged)", why, limit, self.local.on_error)
        self._workers[self._workers.index(w)] = _Worker(self._init)

    def close(self) -> None:
        """Stop the worker processes (a worker that exited may still leave its reward's children behind)."""
        for w in self._workers:
            w.stop()
        self._workers = []

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()


def _die_with(parent: int) -> None:
    """Linux: be killed when the trainer dies, even in the middle of a reward that never returns."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed socket still ends an idle worker
        return
    if os.getppid() != parent:  # the trainer died before the line above
        os._exit(1)


def _serve(fd: int, parent: int) -> None:
    """A worker's life: build the reward function, then score one response per message until the socket closes."""
    _die_with(parent)
    conn = Connection(fd)
    functions, on_error, plugins, kwargs, by_source, accuracy_key = conn.recv()
    try:
        from rllava.config import import_plugins, reward_names
        from rllava.rewards import REWARDS

        names = [n for n in reward_names(functions, by_source) if not n.rpartition(":")[0].endswith(".py")]
        if any(n not in REWARDS for n in names):  # registered by a plugin file: import them (maybe heavy) only then
            import_plugins(plugins)
        fn = RewardFunction(functions, on_error, kwargs, by_source, accuracy_key)
    except Exception as e:  # noqa: BLE001 (sent back to the trainer, which raises it as a config error)
        hint = " (a reward registered only in the calling script cannot reach a worker process: " \
               "put it in a plugins file, or name it path/to/file.py:function)"
        conn.send(("init_error", f"{type(e).__name__}: {e}" + (hint if "unknown reward" in str(e) else "")))
        return
    conn.send(("ready",))
    metas: dict[int, dict] = {}
    call = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        c, i, response, key, meta = msg
        if c != call:
            metas, call = {}, c
        if meta is not None:
            metas[key] = meta
        total, info, failures = fn.score_one(response, metas[key])
        conn.send(("scored", i, total, info, failures, {name: sorted(keys) for name, keys in fn.reports.items()}))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
