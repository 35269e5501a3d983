"""Sandbox launcher: a standalone script (run as `python -I -S launcher.py SPEC_JSON`), never imported.

Process tree: trainer -> launcher -> init -> guard (the Python that runs the model's code).

- launcher: joins the pids cgroup (if the trainer made one), unshares the network, PID and
  mount namespaces (each only if the kernel allows it), forks `init`, and exits with its code.
- init: pid 1 of the new PID namespace. Dies with the launcher (PDEATHSIG), makes every mount
  read-only except the work folder, mounts a fresh /proc, forks the guard, reaps orphans, and
  exits when the guard does. When a PID namespace's init exits, the kernel kills every other
  process in it, so nothing the code started can outlive the call.
- guard child: sets the rlimits, drops every capability (so root inside cannot remount, raise
  hard limits or leave the cgroup), sets no_new_privs, and execs the guard script.

Each layer reports whether it took effect on the status pipe (one JSON line per message).
"""
import ctypes
import ctypes.util
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
# Per-mount flags that a bind remount must restate or it would clear them.
KEEP_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
RLIMITS = {"AS": resource.RLIMIT_AS, "CPU": resource.RLIMIT_CPU, "FSIZE": resource.RLIMIT_FSIZE,
           "NOFILE": resource.RLIMIT_NOFILE, "NPROC": resource.RLIMIT_NPROC, "CORE": resource.RLIMIT_CORE}

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def report(fd, **msg):
    os.write(fd, (json.dumps(msg) + "\n").encode())


def unshare(flag):
    return libc.unshare(flag) == 0


def mount(src, target, fstype, flags):
    enc = [x.encode() if isinstance(x, str) else x for x in (src, target, fstype)]
    return libc.mount(enc[0], enc[1], enc[2], flags, None) == 0


def mount_points():
    """(mount point, per-mount options) from /proc/self/mountinfo, octal escapes decoded."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")
            out.append((point, parts[5].split(",")))
    return out


def readonly_except(keep):
    """Make this mount namespace's every mount read-only except `keep`; returns the mount points that failed."""
    if not mount(None, "/", None, MS_REC | MS_PRIVATE):  # so nothing below propagates to the host
        return ["/"]
    if not mount(keep, keep, None, MS_BIND | MS_REC):  # the work folder becomes its own (writable) mount
        return [keep]
    failed = []
    for point, opts in mount_points():
        if point == keep or point.startswith(keep.rstrip("/") + "/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts:
            flags |= KEEP_FLAGS.get(o, 0)
        if not mount(None, point, None, flags) and os.path.exists(point):
            failed.append(point)
    return failed


def drop_capabilities():
    """Empty the bounding set and forbid privilege gain; exec then leaves even root without capabilities."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 or ctypes.get_errno() != 22:  # EINVAL: past the last cap
        cap += 1
        if cap > 63:
            break
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def run_guard(spec):
    for name, value in spec["rlimits"].items():
        soft, hard = value if isinstance(value, list) else (value, value)
        try:
            resource.setrlimit(RLIMITS[name], (soft, hard))
        except (ValueError, OSError) as e:
            print(f"sandbox: could not set RLIMIT_{name}: {e}", file=sys.stderr)
    if spec["isolate"]:
        drop_capabilities()
    else:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    argv = spec["argv"]
    os.execve(argv[0], argv, dict(os.environ))


def run_init(spec, layers, status_fd, launcher_pid):
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher_pid:  # the launcher died before PDEATHSIG was armed
        os._exit(137)
    if layers.get("mount_namespace"):
        failed = readonly_except(spec["work_dir"])
        layers["readonly_fs"] = not failed
        if failed:
            layers["readonly_fs_failed"] = failed[:5]
        if layers.get("pid_namespace"):
            layers["private_proc"] = mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    report(status_fd, layers=layers)
    child = os.fork()
    if child == 0:
        os.close(status_fd)
        try:
            run_guard(spec)
        finally:
            os._exit(126)
    code = 1
    while True:  # reap everything; stop when the guard itself exits
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else 0
            code = 128 + sig if sig else os.WEXITSTATUS(st)
            report(status_fd, exit_code=None if sig else code, signal=sig or None)
            break
    os._exit(code)


def main():
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    layers = {}
    if spec.get("cgroup"):
        try:
            with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            layers["pids_cgroup"] = True
        except OSError:
            layers["pids_cgroup"] = False
    if spec["isolate"]:
        for name, flag in (("network_namespace", CLONE_NEWNET), ("pid_namespace", CLONE_NEWPID),
                           ("mount_namespace", CLONE_NEWNS)):
            layers[name] = unshare(flag)
    me = os.getpid()
    init = os.fork()
    if init == 0:
        try:
            run_init(spec, layers, status_fd, me)
        finally:
            os._exit(125)
    os.close(status_fd)
    _, st = os.waitpid(init, 0)
    os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))


if __name__ == "__main__":
    main()
