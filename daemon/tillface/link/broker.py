"""A throw-away mosquitto broker on 127.0.0.1 with a free port, for `tillface demo`, the load and
benchmark scripts and the tests: started in a folder of its own (never the system service), stoppable
and restartable (retained messages and sessions persist across a restart, as on a store server).
Needs the mosquitto binary (Debian: apt-get install mosquitto; scripts/setup.sh installs it).

`Mosquitto(folder, keys_dir=...)` runs the configuration we ship for a store
(config/mosquitto/tillface-store.conf) line for line, closed: only its ports (free ones on 127.0.0.1),
its password and ACL files (those `tillface store-admin` provisions in `keys_dir`), its TLS files and,
appended, where it keeps its database and log are changed. Without `tls` its TLS listener is left out."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SHIPPED_CONF = "tillface-store.conf"


def shipped_config() -> Path:
    """The store broker configuration we ship: `TILLFACE_MOSQUITTO_CONF`, else the checkout's
    config/mosquitto/ (editable install), else /usr/share/tillface/mosquitto/."""
    env = os.environ.get("TILLFACE_MOSQUITTO_CONF")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "config" / "mosquitto" / SHIPPED_CONF
    if repo.is_file():
        return repo
    return Path("/usr/share/tillface/mosquitto") / SHIPPED_CONF


def shipped_lines(
    conf: Path, keys_dir: Path, port: int, tls_port: int, tls: dict[str, Path] | None
) -> list[str]:
    """The shipped configuration with its ports and file paths pointed at this test broker's."""
    from ..security import layout
    from ..security.provisioning import ACL, PASSWORDS

    out: list[str] = []
    in_tls_listener = False
    for raw in conf.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            if value == "1883 127.0.0.1":
                in_tls_listener = False
                out.append(f"listener {port} 127.0.0.1")
            elif value == "8883":
                in_tls_listener = True
                if tls:
                    out.append(f"listener {tls_port} 127.0.0.1")
            else:
                raise RuntimeError(f"{conf}: unexpected listener line {line!r}")
            continue
        if in_tls_listener and not tls:
            continue
        if key == "password_file":
            line = f"password_file {keys_dir / layout.BROKER_DIR / PASSWORDS}"
        elif key == "acl_file":
            line = f"acl_file {keys_dir / layout.BROKER_DIR / ACL}"
        elif key in ("certfile", "keyfile", "cafile"):
            assert tls is not None
            line = f"{key} {tls[{'certfile': 'cert', 'keyfile': 'key', 'cafile': 'ca'}[key]]}"
        out.append(line)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        folder: Path,
        *,
        tls: dict[str, Path] | None = None,
        passwords: dict[str, str] | None = None,
        keys_dir: Path | None = None,
    ):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto, or scripts/setup.sh)")
        self.exe = exe
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls and keys_dir is not None else self.port
        self.proc: subprocess.Popen[bytes] | None = None
        if keys_dir is not None:
            self.conf = folder / "mosquitto.conf"
            lines = shipped_lines(shipped_config(), keys_dir, self.port, self.tls_port, tls)
            lines += [
                *(["user root"] if os.geteuid() == 0 else []),
                f"persistence_location {folder}/",
                f"log_dest file {folder}/mosquitto.log",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
            ]
            self.conf.write_text("\n".join(lines) + "\n")
            return
        lines = [
            f"listener {self.port} 127.0.0.1",
            # As root, mosquitto would switch to its own user and lose access to the test's folder.
            *(["user root"] if os.geteuid() == 0 else []),
            "persistence true",
            f"persistence_location {folder}/",
            "autosave_interval 1",
            # A store's broker must hold every member's retained state for a catching-up till.
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {folder}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if passwords:
            pw = folder / "passwords"
            pw.write_text("")
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
            pw.chmod(0o600)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [
                f"cafile {tls['ca']}",
                f"certfile {tls['cert']}",
                f"keyfile {tls['key']}",
                "require_certificate true",
            ]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto`: it re-reads its password and ACL files."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        mark = len(self.log())
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "Reloading config" not in self.log()[mark:] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves retained messages and sessions
            self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
