"""Sandbox launcher: a standalone script (run as `python -I -S launcher.py SPEC_JSON`), never imported.

Process tree: trainer -> launcher -> init -> guard (the Python that runs the model's code).

- launcher: joins the pids cgroup (if the trainer made one), unshares the network, PID and
  mount namespaces (each only if the kernel allows it), forks `init`, and exits with its code.
- init: pid 1 of the new PID namespace. Dies with the launcher (PDEATHSIG). Puts a size- and
  inode-limited tmpfs over the work folder (a copy of it: the disk quota), makes every other mount
  read-only, covers the host's private folders (/tmp, /run, /root, /home, the trainer's cwd, ...)
  with empty read-only tmpfs mounts and binds back only what the code needs (its work folder,
  the interpreter, the guard and code files), refuses socket(AF_UNIX) with a seccomp filter,
  mounts a fresh /proc, forks the guard and reaps orphans. When the guard exits it kills the
  rest of the namespace, checks the work folder against the quota (apparent sizes, each hard
  link counted, and entries: what the copy would write), copies the tmpfs back into the real
  work folder if it fits, and exits. (When a PID
  namespace's init exits, the kernel kills every other process in it, so nothing the code
  started outlives the call. If the call times out, init dies with the launcher and the
  call's file changes are dropped.)
- guard child: sets the rlimits, drops every capability (so root inside cannot remount, raise
  hard limits or leave the cgroup), sets no_new_privs, and execs the guard script.

Each layer reports whether it took effect on the status pipe (one JSON line per message).
"""
import ctypes
import errno
import json
import os
import re
import resource
import shutil
import signal
import stat
import sys

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 24, 38, 22
MNT_DETACH, O_PATH = 2, getattr(os, "O_PATH", 0o10000000)
# Per-mount flags that a bind remount must restate or it would clear them.
KEEP_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
RLIMITS = {"AS": resource.RLIMIT_AS, "CPU": resource.RLIMIT_CPU, "FSIZE": resource.RLIMIT_FSIZE,
           "NOFILE": resource.RLIMIT_NOFILE, "NPROC": resource.RLIMIT_NPROC, "CORE": resource.RLIMIT_CORE}

libc = ctypes.CDLL(None, use_errno=True)  # the running python's own libc symbols (no ldconfig subprocess)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def report(fd, **msg):
    os.write(fd, (json.dumps(msg) + "\n").encode())


def unshare(flag):
    return libc.unshare(flag) == 0


def mount(src, target, fstype, flags, data=None):
    enc = [x.encode() if isinstance(x, str) else x for x in (src, target, fstype, data)]
    return libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) == 0


def mount_points():
    """(mount point, per-mount options) from /proc/self/mountinfo, octal escapes decoded."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            out.append((point, parts[5].split(",")))
    return out


def readonly_except(keep):
    """Make every mount of this (already private) namespace read-only except `keep`; returns the ones that failed."""
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


def copy_entries(src, dst):
    """Copy the files, folders and links in `src` into `dst` (other file types, e.g. FIFOs, are skipped)."""
    def special(folder, names):
        return [n for n in names if not (os.path.islink(os.path.join(folder, n)) or os.path.isfile(os.path.join(folder, n))
                                         or os.path.isdir(os.path.join(folder, n)))]
    for name in os.listdir(src):
        a, b = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(a) and not os.path.islink(a):
            shutil.copytree(a, b, symlinks=True, ignore=special, dirs_exist_ok=True)
        elif os.path.islink(a) or os.path.isfile(a):
            shutil.copy2(a, b, follow_symlinks=False)


def quota_work_dir(work, host_view, size_mb, max_files):
    """Put a size- and inode-limited tmpfs over the work folder, filled with its contents; the real folder stays at host_view."""
    if not mount(work, host_view, None, MS_BIND):
        return False
    # nr_inodes: empty files cost no blocks, so without it the quota would not bound what is copied back
    if not mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes={max_files + 1},mode=0700"):
        return False
    try:
        copy_entries(host_view, work)
    except OSError as e:
        raise OSError(f"the work folder does not fit in the disk quota of {size_mb} MB ({e})") from None
    return True


def work_usage(work):
    """(bytes, entries) that copying `work` back would write: apparent sizes (a sparse file is copied
    densely) and every hard link on its own (each becomes a separate copy). Links are not followed."""
    size = entries = 0
    for folder, dirs, files in os.walk(work):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            entries += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                size += st.st_size
    return size, entries


def hide_host_paths(hide, keep):
    """Cover each folder in `hide` with an empty read-only tmpfs (each file with an unopenable /dev/null),
    binding back the paths in `keep` that lie under it (they keep their own mount flags: the work folder
    writable, the rest read-only by now). Returns the paths that could not be hidden."""
    def under(path, folder):
        return path == folder or path.startswith(folder.rstrip("/") + "/")
    # Descriptors first: once a folder is covered, its paths no longer lead to what was there.
    fds = {p: os.open(p, O_PATH | os.O_CLOEXEC) for p in keep if os.path.exists(p) and any(under(p, h) for h in hide)}
    failed = []
    try:
        for h in hide:
            if not os.path.isdir(h):  # a file (/etc/shadow): /dev/null on a nodev mount, so opening it fails
                if not mount("/dev/null", h, None, MS_BIND):
                    failed.append(h)
                elif not mount(None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC):
                    libc.umount2(h.encode(), MNT_DETACH)
                    failed.append(h)
                continue
            if not mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755"):
                failed.append(h)
                continue
            ok = True
            for p, fd in sorted(fds.items(), key=lambda item: len(item[0])):  # outer paths first
                if not under(p, h) or os.path.exists(p):  # already visible inside an outer path bound back
                    continue
                try:
                    if os.path.isdir(f"/proc/self/fd/{fd}"):
                        os.makedirs(p, mode=0o755, exist_ok=True)
                    else:
                        os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
                        open(p, "a").close()
                except OSError:
                    ok = False
                    break
                if not mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC):
                    ok = False
                    break
            if ok:
                ok = mount(None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            if not ok:  # a half-made view could hide the interpreter: leave this folder as it was
                libc.umount2(h.encode(), MNT_DETACH)
                failed.append(h)
    finally:
        for fd in fds.values():
            os.close(fd)
    return failed


def unhide_host_paths(hidden):
    for h in reversed(hidden):
        libc.umount2(h.encode(), MNT_DETACH)


# seccomp: refuse socket(AF_UNIX). The network namespace covers IP and abstract sockets, but a socket
# file on a visible filesystem (read-only mounts do not stop connect()) would reach a host service.
SECCOMP_MODE_FILTER, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 2, 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # (AUDIT_ARCH_*, __NR_socket)


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def block_unix_sockets():
    """Install a seccomp filter (inherited by every child) that fails socket(AF_UNIX, ...) with EACCES
    and any syscall of a foreign ABI (x32, i386 socketcall) with ENOSYS. False where unsupported."""
    arch = SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, nr_socket = arch
    prog = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ_K, 0, 7, audit_arch),  # foreign ABI -> ENOSYS
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (BPF_JGE_K, 5, 0, 0x40000000),  # x32 syscall numbers -> ENOSYS
        (BPF_JEQ_K, 0, 2, nr_socket),  # not socket() -> allow
        (BPF_LD_W_ABS, 0, 0, 16),  # args[0] (low 32 bits): the address family
        (BPF_JEQ_K, 1, 0, 1),  # AF_UNIX -> EACCES
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EACCES),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # required to install a filter without CAP_SYS_ADMIN
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


def sync_back(work, host_view):
    """After the run: make the real folder writable again and give it the tmpfs contents."""
    for point, opts in mount_points():
        if point == host_view:
            flags = MS_REMOUNT | MS_BIND
            for o in opts:
                flags |= KEEP_FLAGS.get(o, 0)
            mount(None, host_view, None, flags)
    for name in os.listdir(host_view):
        path = os.path.join(host_view, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    copy_entries(work, host_view)


def drop_capabilities():
    """Empty the bounding set and forbid privilege gain; exec then leaves even root without capabilities."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
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
    if os.getppid() not in (0, launcher_pid):  # the launcher died before PDEATHSIG was armed (0: parent outside our PID ns)
        os._exit(137)
    work = spec["work_dir"]
    hidden = []
    if layers.get("mount_namespace"):
        if not mount(None, "/", None, MS_REC | MS_PRIVATE):  # nothing below may propagate to the host
            layers["mount_namespace"] = False
    if layers.get("mount_namespace"):
        # The quota needs a PID namespace: before syncing back, init kills everything else in it (kill -1).
        if spec.get("disk_mb") and layers.get("pid_namespace"):
            layers["disk_quota"] = quota_work_dir(work, spec["host_view"], spec["disk_mb"], spec["max_files"])
        failed = readonly_except(work)
        layers["readonly_fs"] = not failed
        if failed:
            layers["readonly_fs_failed"] = failed[:5]
        # After readonly_except, so the paths bound back are read-only copies (the work folder stays writable).
        not_hidden = hide_host_paths(spec.get("hide", []), [work, *spec.get("keep", [])])
        hidden = [h for h in spec.get("hide", []) if h not in not_hidden]
        layers["hidden_host_paths"] = not not_hidden
        if not_hidden:
            layers["hidden_host_paths_failed"] = not_hidden[:5]
        os.chdir(work)  # the old cwd still points into the mount below the new one
        if layers.get("pid_namespace"):
            layers["private_proc"] = mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    if spec["isolate"]:
        layers["unix_sockets_blocked"] = block_unix_sockets()
    report(status_fd, layers=layers)
    child = os.fork()
    if child == 0:
        os.close(status_fd)
        try:
            run_guard(spec)
        except BaseException as e:
            print(f"sandbox: could not start the interpreter: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
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
    if layers.get("disk_quota") and os.getpid() == 1:  # never kill(-1) outside our own PID namespace
        try:
            os.kill(-1, signal.SIGKILL)  # in a PID namespace: every process but this one, so nothing writes meanwhile
        except ProcessLookupError:
            pass  # nothing else was running
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        size, entries = work_usage(work)
        limit_bytes = spec["disk_mb"] << 20
        if size > limit_bytes or entries > spec["max_files"]:  # the run's files are dropped, the folder kept as it was
            report(status_fd, disk_exceeded={"bytes": size, "entries": entries})
        else:
            unhide_host_paths(hidden)  # sync_back needs the real folder, which the hidden /tmp covers
            # A backstop should the count above miss something: no file copied back exceeds the quota.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
            sync_back(work, spec["host_view"])
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
        except BaseException as e:
            print(f"sandbox launcher failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(125)
    os.close(status_fd)
    _, st = os.waitpid(init, 0)
    os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))


if __name__ == "__main__":
    main()
