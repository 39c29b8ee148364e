"""sd_notify on a real datagram socket: READY, STATUS, periodic WATCHDOG, silence while the loop stalls."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from replay_fixtures import write_config
from tillface.app import Daemon
from tillface.config import load_config
from tillface.recognition.gallery import create_key_file
from tillface.scenario import render_visits
from tillface.system.notify import Notifier


def test_notify_protocol_and_watchdog_stops_when_the_frame_loop_stalls(tmp_path):
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.2)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                data = server.recv(4096)
            except TimeoutError:
                continue
            received.append((time.monotonic(), data.decode()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    render_visits([], tmp_path / "replay", fps=15, gap_s=4.0)  # 4 s of an empty till, in real time
    cfg = write_config(tmp_path / "till.toml", tmp_path / "state", f"replay:{tmp_path / 'replay'}")
    config = load_config(cfg)
    (tmp_path / "state").mkdir()
    create_key_file(config.gallery.key_file)
    notifier = Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"})
    daemon = Daemon(config, cfg, None, notifier=notifier)

    real_detect = daemon.pipeline.detect
    stall: dict[str, float] = {}

    def detect(image, pad_if_none=False):
        if daemon.stats.frames == 20 and "start" not in stall:
            stall["start"] = time.monotonic()
            time.sleep(1.5)  # the injected stall: a detector stuck in one call
            stall["end"] = time.monotonic()
        return real_detect(image, pad_if_none)

    daemon.pipeline.detect = detect  # type: ignore[method-assign]
    assert daemon.run() == 0
    time.sleep(0.3)
    done.set()
    listener.join()
    server.close()

    messages = [m for _, m in received]
    assert messages[0].startswith("READY=1\nSTATUS=camera ok"), messages[:2]
    assert any(m.startswith("STATUS=") for m in messages[1:])
    assert messages[-1] == "STOPPING=1"
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert len(pings) >= 15, f"only {len(pings)} watchdog pings in ~4 s at a 0.1 s interval"
    during = [t for t in pings if stall["start"] + 0.05 < t < stall["end"] - 0.05]
    assert during == [], "WATCHDOG=1 was sent while the frame loop was stalled"
    gaps = np.diff(pings)
    assert gaps.max() >= 1.4, "the stall should show as a gap in the pings"
    assert np.median(gaps) < 0.3


def test_no_socket_means_no_op():
    n = Notifier({})
    assert not n.enabled
    assert n.send("READY=1") is False
    assert n.watchdog() is False
