"""Run model-written Python in a separate, limited process: `run_python(code, limits) -> SandboxResult`.

The code never runs in the trainer's process. Each call starts `_sandbox_launcher.py`, which
sets up the OS layers and execs `_sandbox_guard.py`, which installs Python audit hooks and
runs the code. What holds the code, and who enforces it:

| limit | OS (kernel) | Python audit hook (guard) |
|---|---|---|
| wall time | whole process group SIGKILLed at `timeout_s` (the copy-back of the work folder included); with a PID namespace every descendant dies too | - |
| CPU time | RLIMIT_CPU (SIGXCPU) | - |
| memory | RLIMIT_AS per process (MemoryError) | - |
| file size | RLIMIT_FSIZE (also caps stdout/stderr files) | - |
| disk use | the work folder is a tmpfs copy (RAM) of at most `disk_mb` and `max_files` inodes; when the code exits, if its apparent size (sparse files in full, each hard link counted), entry count and nesting (`MAX_DEPTH` levels) fit, it is copied (without setuid/setgid bits) into a staging folder beside the work folder and renamed into place, so the folder is always either as before the call or as the code left it (calls on one folder from several threads take turns); dropped when it does not fit, on timeout and on any copy error (the note says so); needs mount + PID namespaces and a writable parent folder | - |
| open files | RLIMIT_NOFILE | - |
| processes | pids cgroup `pids.max` if one can be made (works as root); RLIMIT_NPROC only for non-root users (the kernel exempts uid 0) | fork/exec/spawn/system/Popen refused unless `allow_subprocess` (even then multiprocessing.Pool, Queue, Lock and ProcessPoolExecutor fail: their semaphores need a writable /dev/shm, which is hidden read-only; multiprocessing.Process with Pipe works) |
| network | network namespace with no interfaces up; seccomp allows socket() only for AF_INET/AF_INET6 (no Unix socket files on the host, vsock, netlink, ...), socketpair() only for connected AF_UNIX pairs, and refuses io_uring (its requests bypass syscall filters); /tmp and /run hidden | every `socket.*` event refused, except AF_UNIX socket objects where that seccomp filter is in place (`layers["unix_sockets_blocked"]`): the socket pairs of asyncio's event loop and multiprocessing.Pipe (so those need `python_guards=False` where the filter is not) |
| reading host files | /tmp (and TMPDIR), /var/tmp, /run, /dev (but null, zero, full, random, urandom: device nodes are the disks, consoles, ... of the host), /root, /home, the trainer's cwd, its home wherever it is ($HOME and the passwd entry's, e.g. /fsx/home/u), $HF_HOME, $XDG_CACHE_HOME, $XDG_CONFIG_HOME, $XDG_DATA_HOME, /etc/shadow are covered by empty read-only mounts (a cwd or home at or above a system folder, e.g. HOME=/, is left alone): other episodes' folders, the run's data and outputs, tokens and keys are not there; the work folder, the interpreter (prefix, base prefix) and the guard and code files are bound back | - |
| writes outside the work folder | mount namespace with every other mount read-only, capabilities dropped so it cannot be undone | `open` for writing and os.remove/rename/mkdir/chmod/... outside it refused |
| leftovers | PID namespace (init's exit kills the rest) and a cgroup sweep | - |
| secrets | environment scrubbed; HOME/TMPDIR/cwd = the private work folder; seccomp refuses the kernel keyrings (add_key, request_key, keyctl: not namespaced, so the trainer user's keys) | ctypes refused |

OS layers need privileges (root with CAP_SYS_ADMIN, as on the development machines, where each
layer is verified by tests/test_sandbox.py). Where the kernel refuses one, it is skipped and `SandboxResult.layers` says so: check it, or call
`sandbox_support()`, rather than assume. The audit hooks stop accidents, not a determined
attacker (see `_sandbox_guard.py`); for hostile code at scale, also run the trainer in a
container or VM. Memory is per process (RLIMIT_AS), so the total is bounded by
`max_processes x memory_mb`. As root without a pids cgroup, only the audit hook limits forks.
Folders not in the hidden list (e.g. /srv/datasets given by absolute path) stay readable: keep
answers and secrets under the trainer's cwd, the temp folder or the trainer's home.
"""
from __future__ import annotations

import json
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

_HERE = Path(__file__).resolve().parent
LAUNCHER = _HERE / "_sandbox_launcher.py"
GUARD = _HERE / "_sandbox_guard.py"
MEMORY_EXIT = 120  # the guard's exit status after an uncaught MemoryError (same constant there)
# Deepest folder nesting copied back from the quota tmpfs: deeper trees break path-length limits and recursive
# tools (the trainer's own shutil.rmtree of the episode folder), so such a run's files are dropped.
MAX_DEPTH = 100
_LAUNCHER_TASKS = 2  # launcher + init sit in the cgroup beside the code


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall time
    cpu_time_s: Optional[float] = None  # RLIMIT_CPU; None = timeout_s
    memory_mb: int = 512  # RLIMIT_AS of each process
    file_size_mb: int = 16  # RLIMIT_FSIZE (largest file, stdout and stderr included)
    disk_mb: int = 64  # all files in the work folder together (a tmpfs quota; needs mount and PID namespaces)
    max_files: int = 4096  # files, folders and links in the work folder together (same quota)
    max_processes: int = 16  # tasks (processes and threads) the code may have, itself included
    max_open_files: int = 256
    max_output_chars: int = 4000  # stdout and stderr are each cut to this (head and tail kept)
    # let the audit hook pass fork/exec (the OS limits still apply); multiprocessing's Pool/Queue/Lock still fail
    # (no writable /dev/shm for their semaphores), Process with Pipe works
    allow_subprocess: bool = False
    os_isolation: bool = True  # namespaces, read-only mounts, pids cgroup, dropped capabilities
    python_guards: bool = True  # audit hooks
    python: str = ""  # interpreter for the code; "" = this one


@dataclass
class SandboxResult:
    exit_code: Optional[int]  # None when killed by a signal
    signal: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool
    memory_exceeded: bool
    cpu_exceeded: bool
    process_limit_hit: bool
    duration_s: float
    limits: SandboxLimits
    layers: dict[str, Any] = field(default_factory=dict)  # which OS layers took effect
    # {"bytes", "entries", "depth"} of the work folder when it broke the disk quota (the run's files were dropped)
    disk_exceeded: Optional[dict[str, int]] = None
    copy_back_error: Optional[str] = None  # why the run's files could not be copied back (they were dropped)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def notes(self) -> list[str]:
        lim, out = self.limits, []
        if self.timed_out:
            out.append(f"timed out after {lim.timeout_s:g} s; the program was killed")
        if self.memory_exceeded:
            out.append(f"memory limit of {lim.memory_mb} MB exceeded")
        if self.cpu_exceeded:
            out.append(f"CPU time limit of {_cpu_seconds(lim)} s exceeded")
        if self.process_limit_hit:
            out.append(f"process limit of {lim.max_processes} reached")
        if "[Errno 27]" in self.stderr:
            out.append(f"file size limit of {lim.file_size_mb} MB reached")
        if "[Errno 28]" in self.stderr and self.layers.get("disk_quota"):
            out.append(f"disk quota of {lim.disk_mb} MB reached (it also allows at most {lim.max_files} files)")
        used = self.disk_exceeded or {}
        if used.get("bytes", 0) > lim.disk_mb << 20 or used.get("entries", 0) > lim.max_files:
            out.append(f"disk quota exceeded: the work folder held {used['bytes'] / (1 << 20):.1f} MB in "
                       f"{used['entries']} files and folders (sparse files count in full, each hard link "
                       f"counts); the limit is {lim.disk_mb} MB and {lim.max_files} files")
        if used.get("depth", 0) > MAX_DEPTH:
            out.append(f"folders in the work folder were nested more than {MAX_DEPTH} levels deep, which is not allowed")
        if self.copy_back_error:
            out.append(f"the work folder could not be updated ({self.copy_back_error})")
        if (self.timed_out or self.disk_exceeded or self.copy_back_error) and self.layers.get("disk_quota"):
            out.append("files written during this run were discarded")
        return out

    def to_text(self) -> str:
        """The observation shown to the model: status, notes, stdout, stderr."""
        if self.timed_out or self.exit_code is None:
            status = "killed" + (f" by {signal.Signals(self.signal).name}" if self.signal else "")
        else:
            status = f"exit status: {self.exit_code}"
        lines = [status] + [f"note: {n}" for n in self.notes()]
        if self.stdout:
            lines += ["stdout:", self.stdout.rstrip("\n")]
        if self.stderr:
            lines += ["stderr:", self.stderr.rstrip("\n")]
        if not self.stdout and not self.stderr:
            lines.append("(no output)")
        return "\n".join(lines)


def run_python(code: str, limits: Optional[SandboxLimits] = None, work_dir: Optional[Path] = None) -> SandboxResult:
    """Run `code` as `__main__` in a sandboxed interpreter; `work_dir` (kept) or a fresh temp folder (removed).
    With the disk quota, each call that ends in time replaces `work_dir` by a renamed copy (same path, new
    folder): refer to it by path, not by an open descriptor or a process's cwd. Calls on the same `work_dir`
    from several threads of this process run one after another (each waits for the folder before its
    `timeout_s` starts); separate processes must not share a work folder."""
    lim = limits or SandboxLimits()
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="rllava-sbx-")) if own_work else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    with _work_folder_lock(work):
        # Real paths (a TMPDIR may be reached through a symlink): the launcher matches them against mountinfo,
        # and the code file must stay reachable when the folders around it are hidden.
        ctl = Path(tempfile.mkdtemp(prefix="rllava-sbx-ctl-")).resolve()  # code and output files, outside the code's reach
        stage = None
        if lim.os_isolation and lim.disk_mb:
            # The run's files are copied here, beside the work folder (the same filesystem), and renamed into place.
            # Without a writable parent there is no quota: the code then writes straight into the work folder.
            try:
                stage = Path(tempfile.mkdtemp(prefix=f".{work.name}.sandbox-", dir=work.parent)).resolve()
            except OSError:
                pass
        cgroup = _make_cgroup(lim.max_processes + _LAUNCHER_TASKS) if lim.os_isolation else None
        try:
            (ctl / "code.py").write_text(code, encoding="utf-8")
            return _run(lim, work, ctl, cgroup, stage)
        finally:
            if cgroup is not None:
                _remove_cgroup(cgroup)
            shutil.rmtree(ctl, ignore_errors=True)
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)  # the run's files when they were not swapped in
            if own_work:
                shutil.rmtree(work, ignore_errors=True)


# One lock per work folder (real path) in use, so that two calls on it cannot interleave their copy-backs and
# swaps (the second would rename the folder away while the first copies, and one call's files would be lost).
# An entry lives while some call holds or waits for it.
_WORK_LOCKS: dict[str, tuple[threading.Lock, list[int]]] = {}
_WORK_LOCKS_GUARD = threading.Lock()


@contextmanager
def _work_folder_lock(work: Path) -> Iterator[None]:
    key = str(work)
    with _WORK_LOCKS_GUARD:
        lock, users = _WORK_LOCKS.setdefault(key, (threading.Lock(), [0]))
        users[0] += 1
    try:
        with lock:
            yield
    finally:
        with _WORK_LOCKS_GUARD:
            users[0] -= 1
            if users[0] == 0:
                del _WORK_LOCKS[key]


def _run(lim: SandboxLimits, work: Path, ctl: Path, cgroup: Optional[Path], stage: Optional[Path]) -> SandboxResult:
    # Through its folder's real path: only real paths are kept visible, and a venv reached through a link (a linked
    # checkout under /tmp, say) would be hidden. Not the file's own real path: a venv's python links to the base
    # install's, which started as itself would not find the venv.
    given = lim.python or sys.executable
    python = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(given))), os.path.basename(given))
    # The launcher appends the guard's config (adding whether its seccomp filter is in place) and the code file.
    guard_cfg = {"work_dir": str(work), "guards": lim.python_guards, "block_network": True,
                 "block_writes": True, "block_processes": not lim.allow_subprocess, "seccomp_sockets": False}
    argv = [python, "-I", "-B", "-X", "utf8", str(GUARD)]
    r, w = os.pipe()
    (ctl / "host").mkdir()  # where init keeps the real work folder while a tmpfs copy stands in for it
    (ctl / "stage").mkdir()  # where init sees the staging folder (its own path may lie under a hidden folder)
    keep = [*_interpreter_paths(python), str(GUARD), os.path.realpath(ctl / "code.py"),
            *(d for d in _DEV_NODES if os.path.exists(d))]
    spec = {"status_fd": w, "cgroup": str(cgroup) if cgroup else None, "isolate": lim.os_isolation,
            "work_dir": str(work), "rlimits": _rlimits(lim, cgroup is not None), "argv": argv,
            "guard_cfg": guard_cfg, "code": str(ctl / "code.py"),
            "disk_mb": lim.disk_mb if stage else 0, "max_files": lim.max_files, "max_depth": MAX_DEPTH,
            "host_view": str(ctl / "host"), "stage": str(stage), "stage_view": str(ctl / "stage"),
            "hide": _host_paths_to_hide(work, keep), "keep": keep}
    start = time.monotonic()
    try:
        with open(ctl / "stdout", "wb") as out, open(ctl / "stderr", "wb") as err:
            proc = subprocess.Popen([python, "-I", "-S", "-B", str(LAUNCHER), json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work,
                                    env=_clean_env(work), start_new_session=True, pass_fds=(w,))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    timed_out = not _wait_unreaped(proc.pid, start + lim.timeout_s)
    # Kill the whole group while the launcher (a zombie at worst) still holds its id, then reap.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    duration = time.monotonic() - start
    limit_hit = _sweep_cgroup(cgroup) if cgroup is not None else False
    status = _read_status(r)
    code, sig = status.get("exit_code"), status.get("signal")
    if "exit_code" not in status and not timed_out:  # the launcher itself failed: report its status
        rc = proc.returncode
        code, sig = (rc, None) if rc >= 0 else (None, -rc)
    if timed_out:
        code, sig = None, signal.SIGKILL
    # With the quota, the run's files reach the work folder only here, after the sandbox has exited (so the
    # deadline's kill cannot land halfway): a timed-out, over-quota or failed run leaves the folder as it was.
    copy_error = status.get("copy_back_failed")
    dropped = timed_out or status.get("disk_exceeded") or copy_error
    if stage is not None and status.get("layers", {}).get("disk_quota") and not dropped:
        copy_error = _swap_in(stage, work) if status.get("staged") else "the sandbox stopped before copying it back"
    return SandboxResult(
        exit_code=code, signal=sig,
        stdout=_read_clipped(ctl / "stdout", lim.max_output_chars),
        stderr=_read_clipped(ctl / "stderr", lim.max_output_chars),
        timed_out=timed_out, memory_exceeded=code == MEMORY_EXIT,
        cpu_exceeded=sig == signal.SIGXCPU, process_limit_hit=limit_hit,
        duration_s=duration, limits=lim, layers=status.get("layers", {}), disk_exceeded=status.get("disk_exceeded"),
        copy_back_error=copy_error)


def _swap_in(stage: Path, work: Path) -> Optional[str]:
    """Put the staging folder (the run's files) in the work folder's place and remove the old one. Two renames
    on one filesystem: the work folder is the old state until the second, the new one after it (only a kill
    of this process between the two could leave neither in place). Returns why it failed, with the work
    folder as it was, or None."""
    old = stage.with_name(stage.name + "-old")
    try:
        os.chmod(stage, stat.S_IMODE(os.stat(work).st_mode))  # the folder keeps its own permissions
        os.rename(work, old)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    try:
        os.rename(stage, work)
    except OSError as e:
        os.rename(old, work)
        return f"{type(e).__name__}: {e}"
    shutil.rmtree(old, ignore_errors=True)
    return None


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for `pid` to exit without reaping it (so its process-group id stays ours); False on timeout."""
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): it has exited
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


# Host folders the code has no business reading: other episodes' work folders and the trainer's temp
# files (/tmp, TMPDIR), service sockets (/run), home folders (keys, caches), plus the trainer's cwd
# (the run's data with its answers, its outputs) and its own home and cache/config folders wherever they
# are (on clusters often /fsx/home/u, /scratch/u: ~/.netrc, ~/.cache/huggingface/token, ~/.ssh).
# Covered by empty read-only mounts in the sandbox.
_PRIVATE_HOST_PATHS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev", "/root", "/home")
# All that stays of /dev (bound back; the launcher adds the fd links and an empty shm folder). The code runs as uid 0,
# the owner of every device node, and most devices open without capabilities: a disk (/dev/sda, /dev/nvme0n1) for
# reading and writing alike, which a read-only mount does not stop, the consoles, loop devices, /dev/kvm.
_DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_PRIVATE_HOST_FILES = ("/etc/shadow", "/etc/gshadow")  # the code runs as uid 0 (without capabilities): owner access
_PRIVATE_ENV_PATHS = ("HF_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
# The trainer's cwd and home are not covered if they lie in or above the system the interpreter runs on (HOME=/
# or /usr/...), or above a folder that commonly holds installed software.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys", "/dev")
_SOFTWARE_PATHS = ("/opt", "/nix", "/snap", "/var/lib", "/srv")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _trainer_home_folders() -> list[str]:
    """The trainer's home (HOME, and the passwd entry's should HOME point elsewhere) and its cache/config folders."""
    found = [os.path.expanduser("~"), *(os.environ.get(name) for name in _PRIVATE_ENV_PATHS)]
    try:
        found.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (containers)
        pass
    return [p for p in found if p]


def _host_paths_to_hide(work: Path, keep: list[str]) -> list[str]:
    """The existing private folders (real paths, outermost only) that hold neither the work folder nor a kept path,
    then the private files."""
    found = [*_PRIVATE_HOST_PATHS, tempfile.gettempdir()]
    for p in (os.getcwd(), *_trainer_home_folders()):
        p = os.path.realpath(p)
        if not (any(_inside(p, s) or _inside(s, p) for s in _SYSTEM_PATHS)
                or any(_inside(s, p) for s in _SOFTWARE_PATHS)):
            found.append(p)
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in found if os.path.isdir(p)}, key=len):
        # A folder inside the work folder or a kept one cannot be covered (that would hide part of them);
        # a folder that holds them is covered and they are bound back.
        if p == "/" or any(_inside(p, k) for k in [str(work), *keep]) or any(_inside(p, o) for o in out):
            continue
        out.append(p)
    return out + [f for f in _PRIVATE_HOST_FILES if os.path.isfile(f)]


@lru_cache(maxsize=8)
def _interpreter_paths(python: str) -> tuple[str, ...]:
    """Folders the interpreter needs (venv, base install), as real paths, kept visible when home folders are hidden."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    else:
        out = subprocess.run([python, "-I", "-c", "import sys; print('\\n'.join([sys.prefix, sys.exec_prefix, "
                              "sys.base_prefix, sys.base_exec_prefix]))"], capture_output=True, text=True, timeout=60)
        prefixes = out.stdout.split("\n") if out.returncode == 0 else []
    # the executable itself may sit outside its prefix (a venv's python is a link into the base install)
    paths = {os.path.realpath(p) for p in prefixes if p} | {os.path.dirname(os.path.realpath(python)),
                                                            os.path.realpath(os.path.dirname(os.path.abspath(python)))}
    return tuple(sorted(p for p in paths if p and p != "/" and os.path.exists(p)))


def _cpu_seconds(lim: SandboxLimits) -> int:
    return max(1, math.ceil(lim.cpu_time_s if lim.cpu_time_s is not None else lim.timeout_s))


def _rlimits(lim: SandboxLimits, have_cgroup: bool) -> dict[str, Any]:
    cpu = _cpu_seconds(lim)
    mib = 1 << 20
    out: dict[str, Any] = {"AS": lim.memory_mb * mib, "CPU": [cpu, cpu + 1], "FSIZE": lim.file_size_mb * mib,
                           "NOFILE": lim.max_open_files, "CORE": 0}
    if not have_cgroup and os.getuid() != 0:
        # RLIMIT_NPROC counts every task of the user, not just ours, so allow for those already running.
        out["NPROC"] = _user_task_count() + lim.max_processes
    return out


def _user_task_count() -> int:
    uid, n = os.getuid(), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = os.stat(f"/proc/{d}")
                if st.st_uid == uid:
                    n += len(os.listdir(f"/proc/{d}/task"))
            except OSError:
                pass
    return n


def _clean_env(work: Path) -> dict[str, str]:
    """Nothing from the trainer's environment (tokens, paths) leaks in; numeric libraries stay single-threaded."""
    w = str(work)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": w, "TMPDIR": w, "TMP": w, "TEMP": w,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg", "MPLCONFIGDIR": w}


def _read_status(fd: int) -> dict[str, Any]:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            try:
                b = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    status: dict[str, Any] = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        try:
            status.update(json.loads(line))
        except json.JSONDecodeError:
            pass
    return status


def clip_text(text: str, max_chars: int) -> str:
    """Keep the head and tail of a long text, with a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return f"{text[:head]}\n... [{len(text) - max_chars} characters cut] ...\n{text[len(text) - tail:]}"


def _read_clipped(path: Path, max_chars: int) -> str:
    try:
        return clip_text(path.read_bytes().decode("utf-8", errors="replace"), max_chars)
    except OSError:
        return ""


# ---- pids cgroup: the one process-count limit that also binds root


@lru_cache(maxsize=1)
def _cgroup_parent() -> Optional[Path]:
    """A pids-controller cgroup folder where we may create children, or None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in own:
        hid, ctrls, rel = line.split(":", 2)
        for m in mounts:
            _, point, fstype, opts = m.split()[:4]
            if hid != "0" and fstype == "cgroup" and "pids" in ctrls.split(",") and "pids" in opts.split(","):
                candidates.append(Path(point) / rel.lstrip("/"))
            elif hid == "0" and fstype == "cgroup2":
                base = Path(point) / rel.lstrip("/")
                try:
                    if "pids" in (base / "cgroup.subtree_control").read_text().split():
                        candidates.append(base)
                except OSError:
                    pass
    for base in candidates:
        probe = base / f"rllava-probe-{os.getpid()}"
        try:
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return base
    return None


def _make_cgroup(max_tasks: int) -> Optional[Path]:
    parent = _cgroup_parent()
    if parent is None:
        return None
    cg = parent / f"rllava-sbx-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        cg.mkdir()
        (cg / "pids.max").write_text(str(max_tasks))
    except OSError:
        _remove_cgroup(cg)
        return None
    return cg


def _sweep_cgroup(cg: Path) -> bool:
    """Kill whatever is left in the cgroup; True if the pids limit refused a fork during the run."""
    for _ in range(200):
        try:
            pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
        except OSError:
            break
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    try:
        events = dict(line.split() for line in (cg / "pids.events").read_text().splitlines() if line.strip())
        return int(events.get("max", 0)) > 0
    except (OSError, ValueError):
        return False


def _remove_cgroup(cg: Path) -> None:
    for _ in range(50):  # exited tasks may hold it briefly
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


@lru_cache(maxsize=1)
def sandbox_support() -> dict[str, Any]:
    """Which OS layers take effect on this machine (from a real sandboxed run of `pass`), plus `root`."""
    res = run_python("pass", SandboxLimits(timeout_s=10))
    return {**res.layers, "root": os.getuid() == 0, "nproc_rlimit": os.getuid() != 0}
