"""The Python sandbox: each limit is checked by running real code that breaks it.

Where a limit has an OS layer and a Python audit-hook layer, each layer is tested alone
(the other switched off), so a test cannot pass just because the other layer caught it.
OS-layer tests are skipped, with the reason, on machines whose kernel refuses that layer.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import stat
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import rllava.envs.sandbox as sandbox
from rllava.envs.sandbox import SandboxLimits, _cgroup_parent, _host_paths_to_hide, _inside, run_python, sandbox_support

# Programs expected to stop on their own get a generous timeout (it costs nothing and keeps a loaded
# CI machine from failing them); programs that must be stopped get 1 s.
FAST = dict(timeout_s=10.0, memory_mb=256)
GUARDS_ONLY = SandboxLimits(**FAST, os_isolation=False)
OS_ONLY = SandboxLimits(**FAST, python_guards=False)
BOTH = SandboxLimits(**FAST)
SHORT = dict(timeout_s=1.0, memory_mb=256)


def need(*layers: str) -> None:
    missing = [name for name in layers if not sandbox_support().get(name)]
    if missing:
        pytest.skip(f"this kernel refuses sandbox layer(s) {missing}: {sandbox_support()}")


def procs_mentioning(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


def test_normal_code_prints_its_output():
    res = run_python("import sys\nprint(sum(range(10)))\nprint('careful', file=sys.stderr)", BOTH)
    assert res.ok and res.exit_code == 0 and not res.timed_out
    assert res.stdout == "45\n"
    assert res.stderr == "careful\n"
    assert res.to_text() == "exit status: 0\nstdout:\n45\nstderr:\ncareful"


def test_a_venv_reached_through_a_link_in_a_hidden_folder_runs(tmp_path):
    """The temp folder is hidden and only real paths are bound back: an interpreter named through a link there (a
    checkout under /tmp whose .venv links elsewhere) could not be started."""
    need("hidden_host_paths")
    link = tmp_path / "venv"
    link.symlink_to(os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))))
    res = run_python("import sys\nprint(sys.prefix != sys.base_prefix)",
                     SandboxLimits(**FAST, python=str(link / "bin" / os.path.basename(sys.executable))))
    assert res.ok and res.stdout == "True\n", res.stderr


def test_errors_show_only_the_users_traceback():
    res = run_python("def f():\n    return 1 / 0\nf()", BOTH)
    assert res.exit_code == 1
    assert 'File "<code>", line 2, in f' in res.stderr and "ZeroDivisionError" in res.stderr
    assert "_sandbox_guard" not in res.stderr
    syntax = run_python("def f(:\n  pass", BOTH)
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr


def test_infinite_loop_is_killed_at_the_time_limit(tmp_path):
    work = tmp_path / "loop"
    start = time.monotonic()
    res = run_python("while True:\n    pass", SandboxLimits(**SHORT), work_dir=work)
    assert res.timed_out and res.exit_code is None
    assert 1.0 <= time.monotonic() - start < 3.0
    assert "timed out after 1 s" in res.to_text()
    assert procs_mentioning(str(work)) == []


def test_cpu_time_limit_stops_a_busy_program_before_the_wall_clock():
    res = run_python("while True:\n    pass", SandboxLimits(timeout_s=5.0, cpu_time_s=1.0))
    assert res.cpu_exceeded and not res.timed_out  # SIGXCPU came before the 5 s wall limit
    assert "CPU time limit of 1 s exceeded" in res.to_text()


def test_huge_allocation_fails_and_is_reported():
    res = run_python("x = bytearray(4 << 30)\nprint('allocated')", BOTH)
    assert res.memory_exceeded and "allocated" not in res.stdout
    assert "MemoryError" in res.stderr
    assert "memory limit of 256 MB exceeded" in res.to_text()


@pytest.mark.parametrize("layer", ["guards", "os"])
def test_writes_outside_the_work_folder_are_blocked(tmp_path, layer):
    if layer == "os":
        need("mount_namespace", "readonly_fs")
    limits = GUARDS_ONLY if layer == "guards" else OS_ONLY
    target = tmp_path / "outside.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    code = (f"import os\n"
            f"for act in (lambda: open({str(target)!r}, 'w').write('x'), lambda: os.remove({str(keep)!r}),\n"
            f"            lambda: os.mkdir({str(tmp_path / 'newdir')!r})):\n"
            f"    try:\n        act()\n        print('done')\n"
            f"    except OSError as e:\n        print('blocked:', e)\n"
            f"open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())")
    res = run_python(code, limits, work_dir=tmp_path / "work")
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["blocked"] * 3 + ["fine"], res.to_text()
    reason = "not allowed" if layer == "guards" else "Read-only file system"
    assert all(reason in line for line in lines[:3])
    assert not target.exists() and not (tmp_path / "newdir").exists()
    assert keep.read_text() == "precious"
    assert (tmp_path / "work" / "inside.txt").read_text() == "fine"


def test_symlink_out_of_the_work_folder_does_not_open_a_way_out(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("original")
    code = (f"import os\nos.symlink({str(target)!r}, 'link')\n"
            f"try:\n    open('link', 'w').write('changed')\nexcept OSError as e:\n    print('blocked:', e)")
    res = run_python(code, GUARDS_ONLY)
    assert res.stdout.startswith("blocked:") and "not allowed" in res.stdout
    assert target.read_text() == "original"


@pytest.mark.parametrize("layer", ["guards", "os"])
def test_socket_connection_to_localhost_is_blocked(layer):
    if layer == "os":
        need("network_namespace")
    limits = GUARDS_ONLY if layer == "guards" else OS_ONLY
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        res = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                         "print('connected')", limits)
        server.settimeout(0.05)
        with pytest.raises(socket.timeout):  # nobody reached our listener
            server.accept()
    assert res.exit_code == 1 and "connected" not in res.stdout
    expected = "network access is blocked" if layer == "guards" else "Network is unreachable"
    assert expected in res.stderr, res.stderr


def test_fork_bomb_is_refused_by_the_guard(tmp_path):
    work = tmp_path / "bomb"
    start = time.monotonic()
    res = run_python("import os\nwhile True:\n    os.fork()", GUARDS_ONLY, work_dir=work)
    assert res.exit_code == 1 and "starting processes is not allowed (os.fork)" in res.stderr
    assert not res.timed_out and time.monotonic() - start < 5.0  # refused at the first fork
    assert procs_mentioning(str(work)) == []


def test_fork_bomb_is_bounded_by_the_os_and_leaves_nothing_behind(tmp_path):
    support = sandbox_support()
    if not (support.get("pids_cgroup") or support.get("nproc_rlimit")):
        pytest.skip(f"root without a pids cgroup: only the audit hook limits forks here ({support})")
    work = tmp_path / "bomb"
    limits = SandboxLimits(**SHORT, python_guards=False, allow_subprocess=True, max_processes=8)
    code = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)"
    start = time.monotonic()
    res = run_python(code, limits, work_dir=work)
    assert res.timed_out
    if support.get("pids_cgroup"):  # only the cgroup counts refused forks (RLIMIT_NPROC does not)
        assert res.process_limit_hit and "process limit of 8 reached" in res.to_text()
    assert time.monotonic() - start < 4.0
    assert procs_mentioning(str(work)) == []
    assert psutil.Process().children(recursive=True) == []


def test_background_process_that_leaves_the_session_dies_with_the_call(tmp_path):
    need("pid_namespace")
    work = tmp_path / "daemon"
    limits = SandboxLimits(**FAST, allow_subprocess=True)
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    res = run_python(code, limits, work_dir=work)
    assert res.ok and res.stdout == "parent done\n"
    time.sleep(0.05)
    assert procs_mentioning(str(work)) == []


def test_isolated_code_runs_without_capabilities():
    need("mount_namespace")
    res = run_python("print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])", BOTH)
    assert res.stdout.strip() == "0000000000000000"


def test_environment_is_scrubbed_and_home_is_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RLLAVA_TEST_SECRET", "hunter2")
    work = tmp_path / "env"
    res = run_python("import os\nprint(os.environ.get('RLLAVA_TEST_SECRET'))\nprint(os.environ['HOME'])\n"
                     "print(os.environ['TMPDIR'])\nprint(os.getcwd())", BOTH, work_dir=work)
    w = str(work.resolve())
    assert res.stdout.splitlines() == ["None", w, w, w]


def test_long_output_is_cut_in_the_middle():
    res = run_python("print('a' * 30000 + 'END')", SandboxLimits(**FAST, max_output_chars=1000))
    assert len(res.stdout) < 1100
    assert res.stdout.startswith("a" * 500) and res.stdout.rstrip().endswith("END")
    assert "[29004 characters cut]" in res.stdout  # 30004 characters (newline included) minus 1000


def test_file_size_limit():
    res = run_python("open('big.bin', 'wb').write(b'x' * (3 << 20))", SandboxLimits(**FAST, file_size_mb=1))
    assert res.exit_code == 1 and "File too large" in res.stderr
    assert "file size limit of 1 MB reached" in res.to_text()


def test_disk_quota_bounds_the_work_folder_and_a_timeout_drops_the_runs_files(tmp_path):
    need("disk_quota")
    work = tmp_path / "quota"
    work.mkdir()
    (work / "old.txt").write_text("old")
    limits = SandboxLimits(**FAST, disk_mb=4)
    code = ("import os\nos.remove('old.txt')\nopen('new.txt', 'w').write('new')\n"
            "for i in range(10):\n    open(f'chunk{i}', 'wb').write(b'x' * (1 << 20))")
    res = run_python(code, limits, work_dir=work)
    assert res.exit_code == 1 and "No space left on device" in res.stderr
    assert "disk quota of 4 MB reached" in res.to_text()
    names = sorted(p.name for p in work.iterdir())
    assert "old.txt" not in names and (work / "new.txt").read_text() == "new"  # a finished run's changes are kept
    assert len([n for n in names if n.startswith("chunk")]) >= 3  # about 4 x 1 MB fit, the rest did not
    assert sum(p.stat().st_size for p in work.iterdir()) <= 4 << 20
    before = sorted(p.name for p in work.iterdir())
    res = run_python("open('late.txt', 'w').write('x')\nwhile True:\n    pass", SandboxLimits(**SHORT, disk_mb=4),
                     work_dir=work)
    assert res.timed_out and "files written during this run were discarded" in res.to_text()
    assert sorted(p.name for p in work.iterdir()) == before


def test_the_calling_process_keeps_going(tmp_path):
    """After loops, allocations and bombs in the sandbox, the trainer's own limits, cwd and network are intact."""
    before = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC,
                                                 resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE)}
    cwd, env = os.getcwd(), dict(os.environ)
    for code in ("while True:\n    pass", "x = bytearray(4 << 30)", "import os\nwhile True:\n    os.fork()"):
        run_python(code, SandboxLimits(**SHORT))
    assert {r: resource.getrlimit(r) for r in before} == before
    assert os.getcwd() == cwd and dict(os.environ) == env
    assert len(bytearray(64 << 20)) == 64 << 20
    (tmp_path / "still_writable.txt").write_text("yes")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
    assert psutil.Process().children(recursive=True) == []
    assert run_python("print('again')", BOTH).stdout == "again\n"
    parent = _cgroup_parent()
    assert parent is None or list(parent.glob(f"rllava-sbx-{os.getpid()}-*")) == []  # every per-call cgroup removed


def test_sparse_files_hard_links_and_inodes_count_against_the_disk_quota(tmp_path):
    """Sparse files and hard links cost the tmpfs (almost) nothing but are copied back in full: the run
    that made them is dropped and reported. Empty files are bounded by max_files (tmpfs inodes)."""
    need("disk_quota")
    work = tmp_path / "quota"
    work.mkdir()
    (work / "old.txt").write_text("old")
    limits = SandboxLimits(**FAST, disk_mb=4, max_files=50)
    sparse = "import os\nos.remove('old.txt')\nfor i in range(4):\n    open(f's{i}', 'wb').truncate(3 << 20)\nprint('made')"
    links = ("import os\nopen('blob', 'wb').write(b'x' * (1 << 20))\n"
             "for i in range(8):\n    os.link('blob', f'link{i}')\nprint('made')")
    for code in (sparse, links):
        res = run_python(code, limits, work_dir=work)
        assert res.stdout == "made\n" and res.disk_exceeded, res.to_text()
        assert "disk quota exceeded" in res.to_text() and "files written during this run were discarded" in res.to_text()
        assert [p.name for p in work.iterdir()] == ["old.txt"]  # the folder is as it was before the run
    res = run_python("import os\nos.remove('old.txt')\nfor i in range(200):\n    open(f'e{i}', 'w').close()",
                     limits, work_dir=work)
    assert "No space left on device" in res.stderr and "at most 50 files" in res.to_text()
    assert 40 <= len(list(work.iterdir())) <= 50  # what fit was kept
    assert run_python("print(len(__import__('os').listdir()))", limits, work_dir=work).ok  # and still fits


def test_host_files_other_episodes_and_the_trainers_cwd_are_hidden(tmp_path, monkeypatch):
    need("mount_namespace")
    other = Path(tempfile.mkdtemp(prefix="rllava-episode-"))  # a sibling episode's folder
    (other / "notes.txt").write_text("answer is 42")
    # The trainer's cwd, outside /tmp (which is hidden anyway): its data holds the answers.
    run_dir = Path(__file__).resolve().parent / f".sandbox-cwd-{os.getpid()}"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "answers.txt").write_text("42")
    monkeypatch.chdir(run_dir)
    try:
        code = ("import math, os, sys\nimport numpy as np\n"
                f"for p in ({str(other / 'notes.txt')!r}, {str(run_dir / 'data' / 'answers.txt')!r}):\n"
                "    try:\n        print(open(p).read())\n    except OSError as e:\n        print('hidden', e.errno)\n"
                "print(int(np.sqrt(16)), math.pi > 3, os.path.isdir(sys.base_prefix))")  # the interpreter still works
        for limits in (BOTH, OS_ONLY):
            res = run_python(code, limits, work_dir=tmp_path / "work")
            assert res.ok and res.stdout.splitlines() == ["hidden 2", "hidden 2", "4 True True"], res.to_text()
    finally:
        shutil.rmtree(run_dir)
        shutil.rmtree(other)
    assert (tmp_path / "work").exists()  # the work folder itself (under the hidden /tmp) was bound back


def test_unix_socket_on_the_host_filesystem_is_unreachable(tmp_path):
    """The network namespace does not cover socket files; the audit hook is off, as if code had disabled it."""
    need("mount_namespace")
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        code = (f"import os, socket\nprint(os.path.exists({path!r}))\n"
                f"s = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('connected')")
        res = run_python(code, OS_ONLY)
        server.settimeout(0.05)
        with pytest.raises(socket.timeout):  # nobody reached our listener
            server.accept()
    assert res.stdout == "False\n" and res.exit_code == 1, res.to_text()  # the socket file is hidden
    if res.layers.get("unix_sockets_blocked"):  # and seccomp refuses the socket itself (x86_64, aarch64)
        assert "PermissionError: [Errno 13]" in res.stderr, res.to_text()


def test_the_trainers_home_and_cache_folders_are_hidden_wherever_they_are(tmp_path, monkeypatch):
    """On clusters HOME is often /fsx/home/u or /scratch/u, outside /home and /root, with ~/.netrc and
    ~/.cache/huggingface/token in it; HF_HOME may lie elsewhere again."""
    need("mount_namespace")
    here = Path(__file__).resolve().parent  # outside every folder hidden by default (unless the repo is under one)
    home, hf_home = here / f".sandbox-home-{os.getpid()}", here / f".sandbox-hf-{os.getpid()}"
    monkeypatch.chdir(tmp_path)  # so that the cwd (the repo, hidden as such) does not cover them
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    try:
        for folder, name in ((home, ".netrc"), (hf_home, "token")):
            folder.mkdir()
            (folder / name).write_text("hf_secret")
        hidden = _host_paths_to_hide(tmp_path / "work", [])
        assert any(_inside(str(home), h) for h in hidden) and any(_inside(str(hf_home), h) for h in hidden), hidden
        code = (f"import os\nfor p in ({str(home / '.netrc')!r}, {str(hf_home / 'token')!r}):\n"
                "    try:\n        print(open(p).read())\n    except OSError as e:\n        print('hidden', e.errno)\n"
                f"for p in ({str(home)!r}, {str(hf_home)!r}):\n"
                "    print(os.listdir(p) if os.path.isdir(p) else 'gone')")
        res = run_python(code, OS_ONLY, work_dir=tmp_path / "work")
        # each folder is empty, or gone with a hidden folder above it (a checkout under /tmp)
        lines = res.stdout.splitlines()
        assert res.ok and len(lines) == 4 and lines[:2] == ["hidden 2", "hidden 2"], res.to_text()
        assert set(lines[2:]) <= {"[]", "gone"}, res.to_text()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(hf_home, ignore_errors=True)


def test_only_ip_sockets_can_be_made_and_io_uring_is_refused():
    """The network namespace isolates IP only: a Unix socket reaches socket files on the host, vsock the host or
    hypervisor, netlink the kernel, so seccomp refuses those families; io_uring is refused too, since its requests
    (IORING_OP_SOCKET makes a socket without socket()) are not syscalls a filter sees. The audit hook is off, as
    if code had got around it; ordinary code that uses socket pairs (asyncio) or subprocesses still works."""
    need("unix_sockets_blocked")
    code = """import asyncio, ctypes, errno, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)  # struct io_uring_params
print('io_uring_setup', libc.syscall(425, 4, params), errno.errorcode.get(ctypes.get_errno()))
for family, kind in (('AF_UNIX', 'SOCK_STREAM'), ('AF_UNIX', 'SOCK_DGRAM'), ('AF_NETLINK', 'SOCK_RAW'),
                     ('AF_VSOCK', 'SOCK_STREAM'), ('AF_PACKET', 'SOCK_RAW')):
    try:
        socket.socket(getattr(socket, family), getattr(socket, kind))
        print(family, 'created')
    except OSError as e:
        print(family, errno.errorcode[e.errno])
try:
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # an unconnected datagram socket could sendto() a socket file
    print('datagram pair created')
except OSError as e:
    print('datagram pair', errno.errorcode[e.errno])
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
a, b = socket.socketpair()
a.send(b'x')
print('AF_INET created, stream pair', b.recv(1))
asyncio.run(asyncio.sleep(0))
print('asyncio', subprocess.run([sys.executable, '-c', 'print(1)'], capture_output=True, text=True).stdout.strip())
"""
    res = run_python(code, SandboxLimits(**FAST, python_guards=False, allow_subprocess=True))
    assert res.stdout.splitlines() == [
        "io_uring_setup -1 ENOSYS", "AF_UNIX EACCES", "AF_UNIX EACCES", "AF_NETLINK EACCES", "AF_VSOCK EACCES",
        "AF_PACKET EACCES", "datagram pair EACCES", "AF_INET created, stream pair b'x'", "asyncio 1"], res.to_text()


def _staging_leftovers(work: Path) -> list[str]:
    return [p.name for p in work.parent.iterdir() if p.name.startswith(f".{work.name}.sandbox-")]


def test_a_deep_folder_tree_is_dropped_whole_and_the_work_folder_kept(tmp_path):
    """Copying back is iterative and bounded in depth: a 700-deep tree (far inside the quota's entry count)
    neither breaks the copy halfway nor costs the folder its earlier files; the model is told."""
    need("disk_quota")
    work = tmp_path / "deep"
    work.mkdir()
    (work / "keep.txt").write_text("from an earlier call")
    # (The audit hook is off only because its realpath checks make 700 nested mkdirs slow.)
    res = run_python("import os\nos.remove('keep.txt')\nos.makedirs('/'.join(['a'] * 700))\nprint('made')", OS_ONLY,
                     work_dir=work)
    assert res.exit_code == 0 and res.stdout == "made\n", res.to_text()
    text = res.to_text()
    assert "nested more than 100 levels deep" in text and "files written during this run were discarded" in text
    assert os.listdir(work) == ["keep.txt"] and (work / "keep.txt").read_text() == "from an earlier call"
    # A tree within the limit is copied back; a path too long to copy is dropped whole with the reason.
    res = run_python("import os\nos.makedirs('/'.join(['b'] * 50))\nopen('/'.join(['b'] * 50 + ['f.txt']), 'w').write('x')",
                     BOTH, work_dir=work)
    assert res.ok and res.notes() == [], res.to_text()
    assert (work.joinpath(*["b"] * 50) / "f.txt").read_text() == "x" and (work / "keep.txt").exists()
    long_path = "import os\nos.remove('keep.txt')\nfor i in range(20):\n    os.mkdir('c' * 250)\n    os.chdir('c' * 250)"
    res = run_python(long_path, OS_ONLY, work_dir=work)
    assert res.exit_code == 0 and "could not be updated" in res.to_text() and "files written during this run were discarded" in res.to_text()
    assert sorted(os.listdir(work)) == ["b", "keep.txt"]
    assert _staging_leftovers(work) == []


def test_a_timeout_during_the_copy_back_leaves_the_work_folder_as_it_was(tmp_path, monkeypatch):
    """The deadline may strike while the run's files are being copied back: the folder must then be exactly as it
    was before the call (not emptied and half-filled), as the note says. A launcher whose file copies are slow
    makes the deadline land there every time."""
    need("disk_quota")
    slow = tmp_path / "slow_launcher.py"
    slow.write_text(f"import shutil, sys, time\nsys.path.insert(0, {str(sandbox.LAUNCHER.parent)!r})\n"
                    "import _sandbox_launcher\ncopy2 = shutil.copy2\n\n\n"
                    "def slow_copy2(*args, **kwargs):\n    time.sleep(0.1)\n    return copy2(*args, **kwargs)\n\n\n"
                    "shutil.copy2 = slow_copy2\n_sandbox_launcher.main()\n")
    monkeypatch.setattr(sandbox, "LAUNCHER", slow)
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("from an earlier call")
    code = "import os\nos.remove('keep.txt')\nfor i in range(60):\n    open(f'new{i}', 'w').write('x')\nprint('written')"
    res = run_python(code, SandboxLimits(timeout_s=3.0, memory_mb=256), work_dir=work)  # copying takes >= 6 s
    assert res.stdout == "written\n" and res.timed_out, res.to_text()  # the code finished; the copy-back did not
    assert "files written during this run were discarded" in res.to_text()
    assert os.listdir(work) == ["keep.txt"] and (work / "keep.txt").read_text() == "from an earlier call"
    assert _staging_leftovers(work) == []


def test_copy_back_drops_setuid_and_setgid_bits(tmp_path):
    """The tmpfs is nosuid, but chmod still stores the bits, and root copies the files back: without clearing
    them, any program the code chmod'ed 06755 would land on the host as a root-owned setuid program."""
    need("disk_quota")
    work = tmp_path / "work"
    code = ("import os, shutil\nshutil.copy('/bin/sh', 'sh')\nos.chmod('sh', 0o6755)\n"
            "os.mkdir('shared')\nos.chmod('shared', 0o2775)\nopen('shared/f', 'w').close()\nos.chmod('shared/f', 0o4640)\n"
            "print(oct(os.stat('sh').st_mode & 0o7777), oct(os.stat('shared').st_mode & 0o7777))")
    res = run_python(code, BOTH, work_dir=work)
    assert res.ok and res.stdout == "0o6755 0o2775\n" and res.copy_back_error is None, res.to_text()
    modes = {name: stat.S_IMODE(os.lstat(work / name).st_mode) for name in ("sh", "shared", "shared/f")}
    assert modes == {"sh": 0o755, "shared": 0o775, "shared/f": 0o640}, {k: oct(v) for k, v in modes.items()}


def test_a_temp_folder_reached_through_a_symlink_keeps_the_runs_files(tmp_path, monkeypatch):
    """TMPDIR (where the control folder goes) may lead through a symlink, here one under the hidden /tmp:
    the launcher compares real paths with mountinfo, and the code file must be reachable by its real path."""
    need("disk_quota")
    (tmp_path / "realtmp").mkdir()
    (tmp_path / "tmplink").symlink_to(tmp_path / "realtmp")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmplink"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR; the old value is put back after
    assert tempfile.gettempdir() == str(tmp_path / "tmplink")
    work = tmp_path / "work"
    res = run_python("open('a.txt', 'w').write('hello')\nprint('wrote')", BOTH, work_dir=work)
    assert res.ok and res.stdout == "wrote\n" and res.copy_back_error is None, res.to_text()
    assert os.listdir(work) == ["a.txt"]
    res = run_python("print(open('a.txt').read())", BOTH, work_dir=work)
    assert res.ok and res.stdout == "hello\n", res.to_text()
    assert os.listdir(tmp_path / "realtmp") == []  # the control folders were removed


def test_asyncio_and_pipes_pass_the_guard_only_where_seccomp_refuses_unix_sockets(tmp_path):
    """socket.socketpair() (asyncio's event loop, multiprocessing.Pipe) makes AF_UNIX socket objects. The guard lets
    them through only when the launcher's seccomp filter is in place, which refuses socket(AF_UNIX) itself: a Unix
    socket file on the host stays unreachable either way, and other socket events stay refused."""
    need("unix_sockets_blocked")
    path = str(tmp_path / "host.sock")
    code = f"""import asyncio, multiprocessing, socket
async def f():
    await asyncio.sleep(0)
    return 3
for name, act in (('asyncio', lambda: asyncio.run(f())), ('pipe', multiprocessing.Pipe),
                  ('unix', lambda: socket.socket(socket.AF_UNIX).connect({path!r})),
                  ('inet', lambda: socket.socket(socket.AF_INET)), ('resolve', lambda: socket.getaddrinfo('localhost', 80))):
    try:
        out = act()
        print(name, 'ok', out if name == 'asyncio' else '')
    except OSError as e:
        print(name, e.errno, e)
"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with_filter = run_python(code, BOTH)
        without = run_python(code, GUARDS_ONLY)
        server.settimeout(0.05)
        with pytest.raises(socket.timeout):  # nobody reached our listener
            server.accept()
    assert with_filter.layers["unix_sockets_blocked"] and not without.layers.get("unix_sockets_blocked")
    lines = with_filter.stdout.splitlines()
    assert lines[:3] == ["asyncio ok 3", "pipe ok ", "unix 13 [Errno 13] Permission denied"], with_filter.to_text()
    assert [line.split(" ", 2)[:2] for line in lines[3:]] == [["inet", "None"], ["resolve", "None"]]
    assert "network access is blocked (socket.__new__)" in lines[3], with_filter.to_text()
    assert "network access is blocked (socket.getaddrinfo)" in lines[4], with_filter.to_text()
    blocked = without.stdout.splitlines()
    assert [line.split(" ", 2)[:2] for line in blocked] == [[n, "None"] for n in ("asyncio", "pipe", "unix", "inet", "resolve")]
    assert all("network access is blocked" in line for line in blocked), without.to_text()


def test_calls_at_once_on_one_work_folder_keep_every_file(tmp_path):
    """Two threads running code on one work folder: the calls take turns, so no swap renames the folder away
    while another call copies it (which lost files)."""
    need("disk_quota")
    work = tmp_path / "work"

    def worker(t: int) -> list[str]:
        errors = []
        for c in range(4):
            res = run_python(f"open('t{t}_{c}', 'w').write('x')", BOTH, work_dir=work)
            if not res.ok or res.copy_back_error:
                errors.append(res.to_text())
        return errors

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(worker, range(2))) == [[], []]
    assert sorted(os.listdir(work)) == sorted(f"t{t}_{c}" for t in range(2) for c in range(4))
    assert _staging_leftovers(work) == [] and sandbox._WORK_LOCKS == {}


def test_a_work_folder_that_cannot_be_copied_in_is_not_blamed_on_the_quota(tmp_path):
    """Copying the work folder into the quota tmpfs can fail for reasons other than space (here a path longer
    than PATH_MAX); only ENOSPC/EDQUOT are reported as the quota."""
    need("disk_quota")
    work = tmp_path / "work"
    work.mkdir()
    fd = os.open(work, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 251 characters: deeper than any path the copy can name
            os.mkdir("c" * 250, dir_fd=fd)
            fd, old = os.open("c" * 250, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    res = run_python("print('ran')", BOTH, work_dir=work)
    assert res.stdout == "" and "could not copy the work folder in ([Errno 36] File name too long" in res.stderr, res.to_text()
    assert "quota" not in res.to_text()
    shutil.rmtree(work / ("c" * 250))
    for i in range(10):
        (work / f"f{i}").touch()
    res = run_python("print('ran')", SandboxLimits(**FAST, max_files=5), work_dir=work)
    assert res.stdout == "" and "does not fit in the disk quota of 64 MB and 5 files" in res.stderr, res.to_text()
