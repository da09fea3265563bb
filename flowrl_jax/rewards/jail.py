"""The sandbox's launcher: run as `python -I -S jail.py CONFIG_JSON` by `sandbox.py`, never imported.

Stdlib only, and single-threaded (it forks). Layers, each for a reason:
- namespaces: a new network namespace (no interface but a down loopback: no network at all), a new
  PID namespace (its init's exit kills every process left in it: daemons cannot outlive the run, and
  nothing outside is visible), IPC and mount namespaces. As root directly; otherwise inside a new
  user namespace.
- the working directory is a fresh tmpfs of `disk_mb` (a program cannot fill the host's disk).
- as root: a uid of its own (100000 + the launcher's pid), so RLIMIT_NPROC counts only this run's
  processes (the kernel does not apply it to root) and host files are "other" to it. The Python
  prefix is bind-mounted read-only into the sandbox, because home directories are often 0700.
- rlimits: CPU seconds, address space, processes, file size, open files, no core files.
- Landlock (kernel >= 5.13): reads only the Python prefix and the system libraries, writes only its
  directory; TCP bind/connect refused (ABI >= 4); signals and abstract sockets kept inside (ABI >= 6).
- seccomp: socket() for anything but AF_UNIX fails with EACCES (network refused even where no
  network namespace could be made).
The launcher itself enforces the wall time and writes a JSON status for the host.
"""

import ctypes
import json
import os
import platform
import resource
import select
import signal
import struct
import sys
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
CLONE_NEWNET, CLONE_NEWIPC = 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_DUMPABLE = 38, 22, 4

libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def enter_namespaces() -> str:
    """-> 'root' or 'userns'. Raises OSError where neither works."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    if os.geteuid() == 0:
        check(libc.unshare(flags), "unshare")
        return "root"
    uid, gid = os.geteuid(), os.getegid()
    check(libc.unshare(flags | CLONE_NEWUSER), "unshare (user namespace)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return "userns"


def prepare_dirs(cfg, mode: str, uid: int) -> str:
    """Mount the tmpfs work dir (and, as root, the Python prefix); -> the Python to run."""
    base, prefix = cfg["base"], cfg["python_prefix"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    work = os.path.join(base, "work")
    owner = f",uid={uid},gid={uid}" if mode == "root" else ""
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_mb']}m,mode=0700{owner}")
    python = cfg["python"]
    if mode == "root":
        target = os.path.join(base, "python")
        mount(prefix, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
        python = os.path.join(target, os.path.relpath(python, prefix))
    for name, text in cfg["files"].items():
        path = os.path.join(work, name)
        with open(path, "w") as f:
            f.write(text)
        if mode == "root":
            os.chown(path, uid, uid)
    return python


def set_limits(cfg) -> None:
    cpu = max(1, int(cfg["cpu_s"] + 0.999))
    memory = cfg["memory_mb"] << 20
    for which, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU, then SIGKILL a second later
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_NPROC, cfg["processes"], cfg["processes"]),
        (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20, cfg["file_mb"] << 20),
        (resource.RLIMIT_NOFILE, cfg["open_files"], cfg["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(which, (soft, hard))


# Landlock access rights (include/uapi/linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_ALL_V1 = (1 << 13) - 1
FS_BITS = {1: FS_ALL_V1, 2: (1 << 14) - 1, 3: (1 << 15) - 1}  # + REFER, + TRUNCATE; then IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2
SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}


def landlock(read_paths, write_paths) -> int:
    """Restrict this process and its children; -> the ABI version used (0: not available)."""
    create, add_rule, restrict = SYS_LANDLOCK.get(platform.machine(), (444, 445, 446))
    abi = libc.syscall(create, None, 0, 1)
    if abi < 1:
        return 0
    handled = FS_BITS.get(abi, (1 << 16) - 1)
    attr = struct.pack("=Q", handled)
    if abi >= 4:
        attr += struct.pack("=Q", NET_BIND_TCP | NET_CONNECT_TCP)  # no rules: all TCP refused
    if abi >= 6:
        attr += struct.pack("=Q", SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(create, buf, len(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14 if abi >= 3 else 0)
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    for paths, rights in ((read_paths, read), (write_paths, handled)):
        for path in paths:
            if not os.path.exists(path):
                continue
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            allowed = rights if os.path.isdir(path) else rights & file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
            result = libc.syscall(add_rule, ruleset, 1, rule, 0)  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)
            if result != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    check(libc.syscall(restrict, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    return abi


# seccomp: a classic BPF program over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}.
AUDIT_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # (arch, socket nr)
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EACCES, AF_UNIX = 0x7FFF0000, 0x00050000, 13, 1


def refuse_network_sockets() -> bool:
    if platform.machine() not in AUDIT_ARCH:
        return False
    arch, socket_nr = AUDIT_ARCH[platform.machine()]
    deny = SECCOMP_RET_ERRNO | EACCES
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),  # arch
        (BPF_JEQ_K, 1, 0, arch),
        (BPF_RET_K, 0, 0, deny),  # a foreign syscall ABI (e.g. 32-bit): refuse everything
        (BPF_LD_W_ABS, 0, 0, 0),  # syscall number
        (BPF_JEQ_K, 0, 3, socket_nr),
        (BPF_LD_W_ABS, 0, 0, 16),  # args[0] low word: the address family
        (BPF_JEQ_K, 1, 0, AF_UNIX),
        (BPF_RET_K, 0, 0, deny),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    filters = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(filters, len(filters))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    check(libc.prctl(PR_SET_SECCOMP, 2, fprog_buf, 0, 0), "seccomp")  # SECCOMP_MODE_FILTER
    return True


def start_program(cfg, mode: str, uid: int, python: str) -> None:
    """In the forked child: drop privileges, apply every limit, exec the runner. Never returns."""
    try:
        work = os.path.join(cfg["base"], "work")
        os.chdir(work)
        set_limits(cfg)
        if mode == "root":
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        prefix = os.path.dirname(os.path.dirname(python))
        reads = [prefix, "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache"]
        reads += ["/dev/urandom", "/dev/zero"]
        landlock(reads, [work, "/dev/null"])
        refuse_network_sockets()
        if cfg["token_fd"] != 3:  # the runner reads its completion token on fd 3
            os.dup2(cfg["token_fd"], 3)
            os.close(cfg["token_fd"])
        env = {"LD_LIBRARY_PATH": os.path.join(prefix, "lib")}  # RUNPATHs may be absolute
        os.execve(python, [python, "-I", "-S", "-c", cfg["runner"], *cfg["argv"]], env)
    except BaseException as e:  # noqa: BLE001 - report any set-up failure, then die
        os.write(2, f"sandbox set-up failed: {type(e).__name__}: {e}\n".encode())
    os._exit(126)


def init(cfg, mode, uid, python) -> None:
    """PID 1 of the namespace: start the program, reap orphans, exit with the program's status
    (which kills everything else in the namespace)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child = os.fork()
    if child == 0:
        start_program(cfg, mode, uid, python)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    t0 = time.monotonic()
    status = {"mode": None, "exit": None, "timed_out": False, "error": None}
    try:
        status["mode"] = mode = enter_namespaces()
        uid = 100000 + os.getpid() if mode == "root" else 0
        python = prepare_dirs(cfg, mode, uid)
        os.set_inheritable(cfg["token_fd"], True)
        pid = os.fork()
        if pid == 0:
            init(cfg, mode, uid, python)
        pidfd = os.pidfd_open(pid)
        ready, _, _ = select.select([pidfd], [], [], cfg["wall_s"])
        if not ready:
            status["timed_out"] = True
            os.kill(pid, signal.SIGKILL)  # init's death takes the whole namespace with it
        _, code = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(code)
        status["exit"] = code - 256 if code > 128 else code  # negative: killed by that signal
    except OSError as e:
        status["error"] = f"{type(e).__name__}: {e}"
    status["wall_s"] = time.monotonic() - t0
    with open(cfg["status_path"], "w") as f:
        json.dump(status, f)


if __name__ == "__main__":
    main()
