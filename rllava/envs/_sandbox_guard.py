"""Sandbox guard: a standalone script (`python -I -B guard.py CONFIG_JSON CODE_FILE`), never imported.

It installs a `sys.addaudithook` hook, then runs the code file as `__main__`. The hook refuses
(with PermissionError, or ImportError for ctypes) the events below. Audit hooks catch
accidents, not a determined attacker: they cannot be removed, but code can get around them
(for example `os.open(name, dir_fd=...)` is audited without its dir_fd, `os.mkfifo` is not
audited, and C extensions do what they like). The OS layers set up by the launcher are
the boundary that holds against such code.

- network: every `socket.*` event (creating, connecting, binding, resolving), except making AF_UNIX
  socket objects when the launcher says its seccomp filter is in place (`seccomp_sockets`): the
  kernel then refuses socket(AF_UNIX) and unconnected pairs, so what is left are the connected
  pairs of socket.socketpair() (asyncio's event loop, multiprocessing.Pipe), which reach nothing
  outside the process. Without the filter they are refused like every other socket.
- writes outside the work folder: `open` with a write flag, and os.remove/rmdir/mkdir/rename/
  link/symlink/chmod/chown/truncate/utime/setxattr/removexattr, shutil.rmtree, sqlite3.connect.
  Paths are resolved with realpath (symlinks followed); /dev/null stays writable.
- processes (unless allowed): os.fork/forkpty/exec/spawn/posix_spawn/system, subprocess.Popen,
  pty.spawn, and os.kill/killpg of anything but itself.
- ctypes (`import ctypes` fails with ImportError) and raising rlimits (resource.setrlimit/prlimit).
"""
import json
import os
import sys
import traceback

MEMORY_EXIT = 120  # exit status after an uncaught MemoryError (sandbox.py reads it)
AF_UNIX = 1  # socket.AF_UNIX on Linux (the only system with the seccomp filter)

PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
                  "subprocess.Popen", "pty.spawn", "os.startfile"}
# event -> ((path arg index, dir_fd arg index or None), ...) of paths that get written
WRITE_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.truncate": ((0, None),), "os.utime": ((0, 3),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),),
    "sqlite3.connect": ((0, None),),
}


def make_hook(cfg):
    work = os.path.realpath(cfg["work_dir"])
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, readlink, getpid = os.path.realpath, os.readlink, os.getpid
    block_net, block_proc, block_write = cfg["block_network"], cfg["block_processes"], cfg["block_writes"]
    unix_pairs = cfg.get("seccomp_sockets") is True  # set by the launcher only once its filter is installed

    def resolve(path, dir_fd=None):
        if isinstance(path, int):  # an open descriptor: where does it point?
            path = readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(os.fspath(path))
        if dir_fd not in (None, -1) and not os.path.isabs(path):
            path = os.path.join(readlink(f"/proc/self/fd/{dir_fd}"), path)
        return realpath(path)

    def check_write(path, dir_fd=None):
        if path == ":memory:" or path == "":
            return
        try:
            p = resolve(path, dir_fd)
        except (OSError, TypeError, ValueError):
            raise PermissionError(f"sandbox: cannot check the path {path!r}; writing it is not allowed") from None
        if p != work and not p.startswith(work + os.sep) and p != "/dev/null":
            raise PermissionError(f"sandbox: writing outside the working folder is not allowed: {p}")

    def hook(event, args):
        if block_net and event.startswith("socket."):
            # args: (socket, family, type, proto); socket.socketpair() wraps each end this way
            if not (unix_pairs and event == "socket.__new__" and args[1] == AF_UNIX):
                raise PermissionError(f"sandbox: network access is blocked ({event})")
        if event == "open" and block_write:
            _, mode, flags = args
            # An int is an already-open descriptor: its access was checked when it was opened.
            writing = (flags or 0) & write_flags or (mode and any(c in mode for c in "wax+"))
            if writing and not isinstance(args[0], int):
                check_write(args[0])
        elif event in WRITE_EVENTS and block_write:
            for i, fd_i in WRITE_EVENTS[event]:
                check_write(args[i], args[fd_i] if fd_i is not None and fd_i < len(args) else None)
        elif block_proc and event in PROCESS_EVENTS:
            raise PermissionError(f"sandbox: starting processes is not allowed ({event})")
        elif block_proc and event in ("os.kill", "os.killpg") and not (event == "os.kill" and args[0] == getpid()):
            raise PermissionError(f"sandbox: signalling other processes is not allowed ({event})")
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise ImportError("sandbox: ctypes is not available")
        elif event.startswith("ctypes.") or event in ("resource.setrlimit", "resource.prlimit"):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


def main():
    cfg = json.loads(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "<code>", "exec")  # a SyntaxError here is reported like any other error
    if cfg["guards"]:
        sys.addaudithook(make_hook(cfg))
    sys.argv = ["<code>"]
    sys.path.insert(0, cfg["work_dir"])
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as e:
        print_user_traceback(e)
        os._exit(MEMORY_EXIT if isinstance(e, MemoryError) else 1)


def print_user_traceback(e):
    """The traceback without this script's frames (the runner and the hook), which only confuse the model."""
    te = traceback.TracebackException.from_exception(e)
    seen, todo = set(), [te]
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = traceback.StackSummary.from_list([f for f in t.stack if f.filename != __file__])
        todo += [t.__cause__, t.__context__]
    sys.stdout.flush()
    sys.stderr.write("".join(te.format()))
    sys.stderr.flush()

if __name__ == "__main__":
    try:
        main()
    except SyntaxError:
        traceback.print_exc(limit=0)
        sys.exit(1)
