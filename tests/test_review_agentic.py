"""Review findings in the agentic area: escapes from the python tool's sandbox that its OS layers let through.

Each escape runs with the audit hooks off (`python_guards=False`): they stop accidents, not a determined program, so
the OS layers must hold on their own. Nothing here opens a host device or touches the machine's shared keyrings.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rllava.envs.sandbox import SandboxLimits, run_python, sandbox_support

OS_ONLY = SandboxLimits(timeout_s=10.0, memory_mb=256, python_guards=False)
# What /dev holds inside the sandbox: the harmless character devices and the usual links and folder.
SANDBOX_DEV = ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]


def need(*layers: str) -> None:
    missing = [name for name in layers if not sandbox_support().get(name)]
    if missing:
        pytest.skip(f"this kernel refuses sandbox layer(s) {missing}: {sandbox_support()}")


def host_device_nodes() -> list[str]:
    """Block and character devices in the host's /dev other than the harmless ones (disks, consoles, loop, kvm)."""
    out = []
    for name in sorted(os.listdir("/dev")):
        try:
            mode = os.lstat(f"/dev/{name}").st_mode
        except OSError:
            continue
        if (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)) and name not in SANDBOX_DEV:
            out.append(f"/dev/{name}")
    return out


def test_sandboxed_code_sees_none_of_the_hosts_device_nodes():
    """The code runs as uid 0, which owns every device node; opening most needs no capability and a read-only mount
    does not stop writes to a device. So /dev/loop0, /dev/console, /dev/kvm, a disk (/dev/sda on a bare-metal node)
    and the GPUs were open to it, for writing too. Only null, zero, full, random and urandom may be there."""
    need("mount_namespace", "hidden_host_paths")
    others = host_device_nodes()
    assert others, "this machine's /dev has no device besides the harmless ones: nothing to check"
    # Only stat, never open: opening some devices has effects (a watchdog starts counting).
    code = ("import os, json\n"
            f"others = {others!r}\n"
            "print(json.dumps(sorted(os.listdir('/dev'))))\n"
            "print(json.dumps([p for p in others if os.path.lexists(p)]))\n"
            "open('/dev/null', 'w').write('x')\n"
            "print(len(open('/dev/urandom', 'rb').read(16)), open('/dev/zero', 'rb').read(2), os.listdir('/dev/shm'))\n"
            "print(sorted(os.listdir('/dev/fd'))[:3])\n"
            "try:\n    open('/dev/shm/x', 'w')\nexcept OSError as e:\n    print('shm', e.errno)\n")
    res = run_python(code, OS_ONLY)
    lines = res.stdout.splitlines()
    assert res.ok and len(lines) == 5, res.to_text()
    assert lines[0] == str(SANDBOX_DEV).replace("'", '"'), res.to_text()
    assert lines[1] == "[]", f"host device nodes visible in the sandbox: {lines[1]}"
    assert lines[2] == "16 b'\\x00\\x00' []"  # the kept devices still work; /dev/shm is empty
    assert lines[3] == "['0', '1', '2']"
    assert lines[4] == "shm 30"  # and read-only: no writable shared memory (EROFS)


def test_a_work_folder_under_dev_shm_is_still_bound_back(tmp_path):
    """TMPDIR=/dev/shm puts the work and control folders under /dev, which is now covered: they must be bound back
    and the run's files copied back as anywhere else."""
    need("mount_namespace", "hidden_host_paths", "disk_quota")
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm on this machine")
    base = Path(tempfile.mkdtemp(prefix="rllava-review-", dir="/dev/shm"))
    try:
        work = base / "work"
        work.mkdir()
        (work / "in.txt").write_text("from the host")
        res = run_python("import os\nprint(open('in.txt').read(), os.getcwd())\nopen('out.txt', 'w').write('kept')",
                         OS_ONLY, work_dir=work)
        assert res.ok and res.stdout == f"from the host {work}\n", res.to_text()
        assert (work / "out.txt").read_text() == "kept"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


KEYRING_PROBE = r"""
import ctypes, sys
from rllava.envs.sandbox import SandboxLimits, run_python

libc = ctypes.CDLL(None, use_errno=True)
NR_ADD_KEY, NR_KEYCTL = 248, 250  # x86_64
# A fresh session keyring for this process only (the sandbox inherits it, as it would the trainer's): the
# machine's shared keyrings are left alone, and the key goes when this process exits.
if libc.syscall(NR_KEYCTL, 1, None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING
    sys.exit(f"SKIP cannot make a session keyring: errno {ctypes.get_errno()}")
key = libc.syscall(NR_ADD_KEY, b"user", b"rllava-review", b"hf_s3cret_token", 15, -3)  # KEY_SPEC_SESSION_KEYRING
if key < 0:
    sys.exit(f"SKIP cannot add a key: errno {ctypes.get_errno()}")
code = f'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(64)
n = libc.syscall({NR_KEYCTL}, 11, {key}, buf, 64)  # KEYCTL_READ
print(n, ctypes.get_errno(), buf.raw[:max(n, 0)].decode())
'''
res = run_python(code, SandboxLimits(timeout_s=10.0, memory_mb=256, python_guards=False))
print(res.to_text())
"""


def test_sandboxed_code_cannot_read_the_trainers_kernel_keyring():
    """Keyrings are not namespaced and the code runs as the trainer's uid: a token the trainer keeps in its keyring
    (the keyring package, Kerberos KEYRING: caches) was readable by keyctl(KEYCTL_READ). Seccomp refuses the keyring
    calls (ENOSYS, 38), as Docker's default profile does."""
    need("unix_sockets_blocked")  # the seccomp filter is in place
    if os.uname().machine != "x86_64":
        pytest.skip("the probe uses x86_64 syscall numbers")
    out = subprocess.run([sys.executable, "-c", KEYRING_PROBE], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    if out.stderr.startswith("SKIP"):
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0, out.stderr
    assert "hf_s3cret_token" not in out.stdout, out.stdout
    assert "stdout:\n-1 38 \n" in out.stdout, out.stdout


def test_the_python_tools_disk_quota_is_for_what_the_code_writes_not_the_episodes_images():
    """An episode's images are exported as PNG into the work folder; a 12 MB one under an 8 MB quota made every
    python call of the episode fail over the quota. The code still gets the quota for its own files on top."""
    import numpy as np
    from PIL import Image

    from rllava.envs.base import ToolContext, ToolSettings
    from rllava.envs.python_tool import python

    need("mount_namespace", "pid_namespace")
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)  # incompressible: ~12 MB as PNG
    ctx = ToolContext(images=[Image.fromarray(noise)],
                      settings=ToolSettings(python=SandboxLimits(timeout_s=20.0, memory_mb=256, disk_mb=8)))
    try:
        code = ("import os\nprint('size', os.path.getsize('image_0.png') >> 20)\n"
                "open('mine.bin', 'wb').write(b'x' * (6 << 20))\nprint('wrote', os.path.getsize('mine.bin') >> 20)")
        out = python({"code": code}, ctx).text
        assert "size 11" in out and "wrote 6" in out and "quota" not in out, out
        assert (ctx.work_dir / "mine.bin").stat().st_size == 6 << 20  # kept: the call fit
        over = python({"code": "open('more.bin', 'wb').write(b'x' * (4 << 20))"}, ctx).text  # 6 + 4 MB > 8 MB
        assert "disk quota of 20 MB reached" in over, over  # 8 MB for the code plus the image's 12
        assert not (ctx.work_dir / "more.bin").exists() or (ctx.work_dir / "more.bin").stat().st_size < 4 << 20
    finally:
        ctx.cleanup()
