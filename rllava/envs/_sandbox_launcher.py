"""Sandbox launcher: a standalone script (run as `python -I -S launcher.py SPEC_JSON`), never imported.

Process tree: trainer -> launcher -> init -> guard (the Python that runs the model's code).

- launcher: joins the pids cgroup (if the trainer made one), unshares the network, PID and
  mount namespaces (each only if the kernel allows it), forks `init`, and exits with its code.
- init: pid 1 of the new PID namespace. Dies with the launcher (PDEATHSIG). Puts a size- and
  inode-limited tmpfs over the work folder (a copy of it: the disk quota), makes every other mount
  read-only, covers the host's private folders (/tmp, /run, /root, /home, the trainer's home and
  cwd, ...) with empty read-only tmpfs mounts and binds back only what the code needs (its work
  folder, the interpreter, the guard and code files), installs a seccomp filter (sockets other
  than AF_INET/AF_INET6, and io_uring, refused), mounts a fresh /proc, forks the guard and reaps
  orphans. When the guard exits it kills the rest of the namespace, checks the work folder against
  the quota (apparent sizes, each hard link counted, entries and nesting depth: what the copy would
  write), copies the tmpfs into the staging folder beside the real work folder if it fits (setuid and
  setgid bits dropped: the copies are root's), reports
  `staged`, and exits. The trainer then swaps the staging folder in with renames, so the work
  folder is always either as it was before the call or as the code left it: never half-copied.
  (When a PID namespace's init exits, the kernel kills every other process in it, so nothing the
  code started outlives the call. If the call times out, init dies with the launcher, nothing is
  staged and the call's file changes are dropped.)
- guard child: sets the rlimits, drops every capability (so root inside cannot remount, raise
  hard limits or leave the cgroup), sets no_new_privs, and execs the guard script, telling it in its
  config whether the seccomp filter is in place (`seccomp_sockets`).

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


def clear_setid(path):
    """Drop the setuid and setgid bits of a file or folder just copied (its other mode bits stay). The copy is
    made by root: a program the code chmod'ed 06755 in its tmpfs (nosuid there, but the bits are stored) would
    otherwise reach the host as a root-owned setuid program."""
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    if mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, mode & ~(stat.S_ISUID | stat.S_ISGID))


def copy_entries(src, dst):
    """Copy the files, folders and links in `src` into the empty folder `dst` (other file types, e.g. FIFOs,
    are skipped), without setuid/setgid bits. Iterative, so a deep tree cannot hit Python's recursion limit
    halfway."""
    todo, folders = [(src, dst)], []
    while todo:
        a_dir, b_dir = todo.pop()
        with os.scandir(a_dir) as it:
            for entry in it:
                b = os.path.join(b_dir, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    os.mkdir(b)
                    todo.append((entry.path, b))
                    folders.append((entry.path, b))
                elif entry.is_symlink():
                    shutil.copy2(entry.path, b, follow_symlinks=False)
                elif entry.is_file(follow_symlinks=False):
                    # (Under a 0700 folder, the staging folder or the tmpfs: nobody else reaches it before the bits go.)
                    shutil.copy2(entry.path, b, follow_symlinks=False)
                    clear_setid(b)
    for a, b in reversed(folders):  # modes and times last: filling a folder changes its mtime (and may need write access)
        shutil.copystat(a, b, follow_symlinks=False)
        clear_setid(b)


def quota_work_dir(work, host_view, stage, stage_view, size_mb, max_files):
    """Put a size- and inode-limited tmpfs over the work folder, filled with its contents; the real folder stays
    at host_view, and the (empty) staging folder the run's files are copied into afterwards at stage_view."""
    if not (mount(work, host_view, None, MS_BIND) and mount(stage, stage_view, None, MS_BIND)):
        return False
    # nr_inodes: empty files cost no blocks, so without it the quota would not bound what is copied back
    if not mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes={max_files + 1},mode=0700"):
        return False
    try:
        copy_entries(host_view, work)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # tmpfs out of blocks or inodes
            raise OSError(f"the work folder does not fit in the disk quota of {size_mb} MB and {max_files} files "
                          f"({e})") from None
        raise OSError(f"could not copy the work folder in ({e})") from None
    return True


def work_usage(work, max_depth):
    """(bytes, entries, depth) that copying `work` back would write: apparent sizes (a sparse file is copied
    densely), every hard link on its own (each becomes a separate copy), and how deep folders nest (its own
    entries are at depth 1; the walk goes no deeper than max_depth + 1). Links are not followed."""
    size = entries = depth = 0
    todo = [(work, 1)]  # an explicit stack: no recursion, however deep the tree
    while todo:
        folder, level = todo.pop()
        with os.scandir(folder) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                entries += 1
                depth = max(depth, level)
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    size += st.st_size
                elif stat.S_ISDIR(st.st_mode) and level <= max_depth:
                    todo.append((entry.path, level + 1))
    return size, entries, depth


# What a covered /dev holds besides the device nodes bound back (sandbox.py keeps /dev/null, zero, full, random,
# urandom): the usual links, and an empty /dev/shm (read-only, as the covered folder is).
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}


def fill_dev():
    os.mkdir("/dev/shm", 0o755)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"/dev/{name}")


def hide_host_paths(hide, keep):
    """Cover each folder in `hide` with an empty read-only tmpfs (each file with an unopenable /dev/null),
    binding back the paths in `keep` that lie under it (they keep their own mount flags: the work folder
    writable, the rest read-only by now). A covered /dev also gets its links and an empty shm folder (`fill_dev`).
    Returns the paths that could not be hidden."""
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
            if h == "/dev":
                try:
                    fill_dev()
                except OSError:
                    ok = False
            for p, fd in sorted(fds.items(), key=lambda item: len(item[0])):  # outer paths first
                if not ok:
                    break
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


# seccomp: the network namespace isolates IP (and abstract Unix sockets), but not the other socket families:
# a Unix socket file on a visible filesystem (read-only mounts do not stop connect()) reaches a host service,
# AF_VSOCK reaches the host or hypervisor, AF_NETLINK talks to the kernel. So socket() is allowed only for
# AF_INET and AF_INET6; socketpair() only for connected AF_UNIX stream/seqpacket pairs (asyncio and
# multiprocessing.Pipe use them; a datagram pair could sendto() a socket file). The guard is told whether this
# filter is in place, and only then lets AF_UNIX socket objects (those pairs) be made. io_uring is refused
# altogether: its requests (IORING_OP_SOCKET, connect, openat, ...) are not syscalls, so no filter sees them.
# So are the kernel keyrings (add_key, request_key, keyctl): they are not namespaced, and the code runs as the
# trainer's uid, so it could read the keys in the trainer user's keyring (tokens, Kerberos tickets).
SECCOMP_MODE_FILTER, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 2, 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_AND_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
# (AUDIT_ARCH_*, socket, socketpair, (add_key, request_key, keyctl))
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 53, (248, 249, 250)), "aarch64": (0xC00000B7, 198, 199, (217, 218, 219))}
NR_IO_URING = (425, 426, 427)  # io_uring_setup, _enter, _register: the same numbers on every architecture
AF_UNIX, AF_INET, AF_INET6, SOCK_STREAM, SOCK_SEQPACKET = 1, 2, 10, 1, 5
# offsets in struct seccomp_data: nr, arch, then args[6] as u64 (low 32 bits first: both arches are little-endian)
NR, ARCH, ARG0, ARG1 = 0, 4, 16, 24


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def assemble(prog):
    """BPF instructions (code, jt, jf, k) with jump targets given as label names (strings in the list) or 0
    (the next instruction); returns them with the relative offsets the kernel expects."""
    labels, n = {}, 0
    for item in prog:
        if isinstance(item, str):
            labels[item] = n
        else:
            n += 1
    out = []
    for item in prog:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        here = len(out) + 1  # jumps count from the next instruction
        jt, jf = (labels[j] - here if j else 0 for j in (jt, jf))
        assert 0 <= jt < 256 and 0 <= jf < 256, "BPF jumps go forward, at most 255 instructions"
        out.append(SockFilter(code, jt, jf, k))
    return out


def install_seccomp_filter():
    """Install a seccomp filter (inherited by every child) that fails socket() of any family but AF_INET/AF_INET6,
    and socketpair() but a connected AF_UNIX pair, with EACCES; io_uring, the keyring calls and any syscall of a
    foreign ABI (x32, i386) with ENOSYS (as on a kernel without them). False where unsupported."""
    arch = SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, nr_socket, nr_socketpair, nr_keys = arch
    prog = [
        (BPF_LD_W_ABS, 0, 0, ARCH),
        (BPF_JEQ_K, 0, "nosys", audit_arch),
        (BPF_LD_W_ABS, 0, 0, NR),
        (BPF_JGE_K, "nosys", 0, 0x40000000),  # x32 syscall numbers
        *[(BPF_JEQ_K, "nosys", 0, nr) for nr in (*NR_IO_URING, *nr_keys)],
        (BPF_JEQ_K, "socket", 0, nr_socket),
        (BPF_JEQ_K, "socketpair", "allow", nr_socketpair),
        "socket",
        (BPF_LD_W_ABS, 0, 0, ARG0),  # the address family
        (BPF_JEQ_K, "allow", 0, AF_INET),
        (BPF_JEQ_K, "allow", "deny", AF_INET6),
        "socketpair",
        (BPF_LD_W_ABS, 0, 0, ARG0),
        (BPF_JEQ_K, 0, "deny", AF_UNIX),
        (BPF_LD_W_ABS, 0, 0, ARG1),
        (BPF_AND_K, 0, 0, 0xF),  # the type without SOCK_NONBLOCK / SOCK_CLOEXEC
        (BPF_JEQ_K, "allow", 0, SOCK_STREAM),
        (BPF_JEQ_K, "allow", "deny", SOCK_SEQPACKET),
        "allow",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        "deny",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EACCES),
        "nosys",
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    ins = assemble(prog)
    filters = (SockFilter * len(ins))(*ins)
    fprog = SockFprog(len(ins), filters)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # required to install a filter without CAP_SYS_ADMIN
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


def copy_to_stage(work, stage_view):
    """After the run: make the staging folder writable again (readonly_except covered it) and copy the tmpfs
    into it. The real work folder is not touched: the trainer swaps the staging folder in once this process
    has reported success and exited, so a kill or an error halfway leaves the folder as it was. `stage_view`
    must be a real path (mountinfo lists real paths)."""
    for point, opts in mount_points():
        if point == stage_view:
            flags = MS_REMOUNT | MS_BIND
            for o in opts:
                flags |= KEEP_FLAGS.get(o, 0)
            if not mount(None, stage_view, None, flags):
                raise OSError(ctypes.get_errno(), "cannot make the staging folder writable")
    copy_entries(work, stage_view)


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
    argv = [*spec["argv"], json.dumps(spec["guard_cfg"]), spec["code"]]
    os.execve(argv[0], argv, dict(os.environ))


def run_init(spec, layers, status_fd, launcher_pid):
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() not in (0, launcher_pid):  # the launcher died before PDEATHSIG was armed (0: parent outside our PID ns)
        os._exit(137)
    # mountinfo lists real paths: compare it with real paths (a TMPDIR reached through a symlink would otherwise
    # leave the staging folder read-only). Resolved now, while every path still leads where the trainer meant.
    for key in ("work_dir", "host_view", "stage", "stage_view"):
        if spec.get(key):
            spec[key] = os.path.realpath(spec[key])
    work = spec["work_dir"]
    hidden = []
    if layers.get("mount_namespace"):
        if not mount(None, "/", None, MS_REC | MS_PRIVATE):  # nothing below may propagate to the host
            layers["mount_namespace"] = False
    if layers.get("mount_namespace"):
        # The quota needs a PID namespace: before syncing back, init kills everything else in it (kill -1).
        if spec.get("disk_mb") and layers.get("pid_namespace"):
            layers["disk_quota"] = quota_work_dir(work, spec["host_view"], spec["stage"], spec["stage_view"],
                                                  spec["disk_mb"], spec["max_files"])
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
        layers["unix_sockets_blocked"] = install_seccomp_filter()  # the key predates the other families
    # The guard lets socket objects of AF_UNIX be made (socket pairs: asyncio, multiprocessing.Pipe) only when
    # this filter, which it inherits, refuses socket(AF_UNIX) and unconnected pairs.
    spec["guard_cfg"]["seccomp_sockets"] = bool(layers.get("unix_sockets_blocked"))
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
        # The run's files reach the real folder only if all of this succeeds (the trainer then swaps the staging
        # folder in); anything else leaves the folder as it was and says why.
        try:
            size, entries, depth = work_usage(work, spec["max_depth"])
            limit_bytes = spec["disk_mb"] << 20
            if size > limit_bytes or entries > spec["max_files"] or depth > spec["max_depth"]:
                report(status_fd, disk_exceeded={"bytes": size, "entries": entries, "depth": depth})
            else:
                unhide_host_paths(hidden)  # the staging folder's view lies under the hidden /tmp
                # A backstop should the count above miss something: no file copied back exceeds the quota.
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
                copy_to_stage(work, spec["stage_view"])
                report(status_fd, staged=True)
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            report(status_fd, copy_back_failed=why if len(why) <= 300 else f"{why[:150]} ... {why[-150:]}")  # paths can be long
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
