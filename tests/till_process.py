"""Real tills for multi-till tests: `tillface run` subprocesses on replay cameras that appear later,
on a real broker, all sharing one store key. Each is provisioned with its own signing key, registered
in the test's store keys folder (`<work>/store-keys`, signing_keys.StoreKeys)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from mqtt_peer import Peer
from replay_fixtures import write_config
from signing_keys import StoreKeys
from tillface.config import load_config
from tillface.imageio import read_rgb
from tillface.recognition.gallery import GalleryStore, read_key_file
from tillface.scenario import ScriptedVisit, render_visits

FPS = 15


def render(photo: Path, cam: Path, name: str, seed: int, pad_s: float) -> Path:
    """One visit, then `pad_s` s of empty shop (hard links: cheap, and the unit stays up), in a folder
    beside `cam` that the camera does not see yet."""
    tmp = cam.with_name(name)
    render_visits([ScriptedVisit(read_rgb(photo), "p")], tmp, fps=FPS, gap_s=1.0, seed=seed)
    frames = sorted(tmp.glob("*.jpg"))
    for i in range(int(pad_s * FPS)):
        os.link(frames[-1], tmp / f"{len(frames) + i:06d}.jpg")
    return tmp


class Till:
    def __init__(
        self, work: Path, till: str, port: int, key: Path, store_keys: StoreKeys | None = None
    ) -> None:
        self.till = till
        self.state = work / till
        self.state.mkdir(parents=True)
        self.store_keys = store_keys or StoreKeys(work / "store-keys")
        self.signer = self.store_keys.provision(till, self.state)
        self.cam = work / f"cam-{till}"
        extra = (
            "reopen_backoff_s = [0.2, 0.5]\n"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nhealth_interval_s = 0.5\n'
            "reconnect_backoff_s = [0.2, 1.0]\n"
        )
        self.cfg = write_config(work / f"{till}.toml", self.state, f"replay:{self.cam}", FPS, extra)
        self.cfg.write_text(self.cfg.read_text().replace('till_id = "t1"', f'till_id = "{till}"'))
        shutil.copy(key, self.state / "gallery.key")
        os.chmod(self.state / "gallery.key", 0o600)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tillface", "run", "--config", str(self.cfg)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=open(self.state / "log.txt", "ab"),  # noqa: SIM115
        )

    def show(self, replay: Path) -> None:
        if self.cam.exists():
            shutil.rmtree(self.cam)
        replay.rename(self.cam)  # the camera "comes back": the unit reopens it with back-off

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def members_on_disk(self) -> list[str]:
        config = load_config(self.cfg)
        store = GalleryStore(
            config.gallery.file, read_key_file(config.gallery.key_file), embedder=config.vision.embedder
        )
        store.load()
        return store.members()

    def log(self) -> str:
        path = self.state / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""


def decisions(peer: Peer, till: str) -> list[dict]:
    """A till's match/visitor events as received, with `event` and the arrival time `at`."""
    return [
        {**m.json(), "event": m.topic.rsplit("/", 1)[-1], "at": m.at}
        for m in peer.messages
        if f"/{till}/event/" in m.topic and m.topic.rsplit("/", 1)[-1] in ("match", "visitor")
    ]


def health_members(peer: Peer, till: str) -> int | None:
    msgs = peer.on(f"/{till}/health")
    return msgs[-1].json()["gallery_members"] if msgs else None
