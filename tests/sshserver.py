"""An SSH server of a test's own on this machine, for Ray's cluster launcher: a user made for the test,
OpenSSH's sshd on 127.0.0.1 and a free port, host and client keys made here.

The user's home is a folder of the test's under /tmp, so nothing of the machine's (root's ~/.ssh, a
~/.bashrc) is read or written. sshd runs in a PID and a mount namespace of its own (util-linux
`unshare`), and so does everything started through it (the Ray head of `ray up`): `ray stop`, which
the launcher runs on the head, stops the processes it can see and signal, here the test user's in that
namespace and nothing else of the machine; stopping sshd, the namespace's first process, ends every
process left in it. The mount namespace makes the test's Python reachable by the test user where a
folder above it is not (pyenv under root's 0700 home): that folder is replaced, in the namespace only,
by an empty one that holds just the way to Python, with the same paths.

Needs root (useradd, namespaces) and OpenSSH's server (Debian: openssh-server) and rsync.
The client side connects through `relay` (this file run as a script) as its ProxyCommand, since
Ray's launcher always connects to port 22 and has no setting for another.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from raycluster import kill_all

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def missing() -> str | None:
    """Why an SSHServer cannot start here, or None."""
    if os.geteuid() != 0:
        return "needs root (a user of the test's own, namespaces)"
    for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "unshare", "useradd", "userdel"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian: apt-get install openssh-server rsync)"
    res = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"],
                         capture_output=True, text=True)
    if res.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        return f"cannot make PID and mount namespaces here: {res.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of_uid(uid: int) -> list[int]:
    """Live processes of a user (zombies left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _hidden_above(path: Path) -> list[Path]:
    """Folders on the way to `path` that other users may not enter, from the top."""
    return [p for p in reversed(path.parents) if p != Path("/") and not os.stat(p).st_mode & stat.S_IXOTH]


def python_paths() -> list[Path]:
    """What the test user needs to run this Python and its packages."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent,
             Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])}
    return sorted(Path(os.path.realpath(p)) for p in paths)


@dataclass
class SSHServer:
    """start() makes the user, keys and sshd; stop() ends sshd and every process of the user, and
    removes the user and the folder."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="alx-", dir="/tmp")))
    user: str = field(default_factory=lambda: "alliter-" + secrets.token_hex(4))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    uid: int = -1

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def proxy_command(self) -> str:
        """ssh's ProxyCommand that reaches this server (ssh runs it through a shell)."""
        return shlex.join([sys.executable, str(Path(__file__).resolve()), "127.0.0.1", str(self.port)])

    def ssh(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command as the user over SSH (sshd runs it with the user's shell, not a login one)."""
        return subprocess.run(
            ["ssh", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
             "-o", f"UserKnownHostsFile={os.devnull}", "-o", "BatchMode=yes",
             "-o", f"ProxyCommand={self.proxy_command()}", f"{self.user}@127.0.0.1", *command],
            capture_output=True, text=True, timeout=timeout,
        )

    def start(self, bashrc: str = "", timeout: float = 30) -> "SSHServer":
        os.chmod(self.root, 0o755)  # the user's home is below it
        subprocess.run(["useradd", "--home-dir", str(self.home), "--no-create-home", "--shell", "/bin/bash",
                        "--user-group", "--password", "*", self.user], check=True, capture_output=True)
        self.uid = pwd.getpwnam(self.user).pw_uid
        gid = pwd.getpwnam(self.user).pw_gid
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True)
        for key in (self.root / "host_key", self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.user, "-f", str(key)],
                           check=True, capture_output=True)
        shutil.copy(self.client_key.with_suffix(".pub"), ssh_dir / "authorized_keys")
        (self.home / ".bashrc").write_text(bashrc)
        for path in (self.home, ssh_dir, ssh_dir / "authorized_keys", self.home / ".bashrc"):
            os.chown(path, self.uid, gid)
        os.chmod(ssh_dir, 0o700)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        (self.root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.root / 'host_key'}\n"
            f"PidFile {self.root / 'sshd.pid'}\nAllowUsers {self.user}\nPermitRootLogin no\nUsePAM no\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AllowTcpForwarding local\nX11Forwarding no\nPrintMotd no\nPrintLastLog no\nMaxStartups 100\n"
            "MaxSessions 100\nLogLevel VERBOSE\n"
        )
        # sshd's privilege-separation folder: what Debian's service creates at boot, empty
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        script = ["set -e"]
        needed = python_paths()
        for hidden in dict.fromkeys(h for p in needed for h in _hidden_above(p)):
            children = sorted({p.relative_to(hidden).parts[0] for p in needed if hidden in p.parents})
            keeps = [self.root / f"keep{secrets.token_hex(4)}" for _ in children]
            for keep in keeps:
                keep.mkdir()
            script += [f"mount --bind {shlex.quote(str(hidden / c))} {k}" for c, k in zip(children, keeps)]
            script.append(f"mount -t tmpfs -o mode=0711 tmpfs {shlex.quote(str(hidden))}")
            for c, k in zip(children, keeps):
                script += [f"mkdir {shlex.quote(str(hidden / c))}", f"mount --bind {k} {shlex.quote(str(hidden / c))}"]
        script.append(f"exec {SSHD} -D -e -f {self.root / 'sshd_config'}")
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                 "sh", "-c", "\n".join(script)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.time() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def sshd_pid(self) -> int | None:
        """sshd's process id in this machine's namespace (the first process of its own)."""
        if self.proc is None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def user_pids(self) -> list[int]:
        return pids_of_uid(self.uid) if self.uid >= 0 else []

    def stop(self) -> None:
        """SIGKILL the user's processes and sshd (and so its namespace), by process id; remove the user."""
        try:
            kill_all(self.user_pids)
            if self.proc is not None:
                if (sshd := self.sshd_pid()) is not None:
                    os.kill(sshd, signal.SIGKILL)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            assert not self.user_pids(), f"processes of {self.user} survived SIGKILL: {self.user_pids()}"
        finally:
            if self.uid >= 0:
                subprocess.run(["userdel", self.user], capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SSHServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def relay(host: str, port: int) -> None:
    """Copy stdin to a TCP connection and the connection to stdout: ssh's ProxyCommand to another port."""
    sock = socket.create_connection((host, port))

    def upstream() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    relay(sys.argv[1], int(sys.argv[2]))
