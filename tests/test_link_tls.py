"""TLS with a CA made at test time, a client certificate and a password: the unit delivers its
events, `tillface doctor` says the broker accepts it, and a wrong CA or password is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mosquitto import Mosquitto
from mqtt_peer import Peer
from test_link_mqtt import make_unit
from tillface.app import Daemon
from tillface.config import load_config
from tls_ca import make_ca

PASSWORD = "s3cret-till-password"


def tls_section(port: int, certs: dict, ca: str = "ca") -> str:
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntls = true\nusername = "till-s1-t1"\n'
        f'ca_file = "{certs[ca]}"\ncert_file = "{certs["client_cert"]}"\nkey_file = "{certs["client_key"]}"\n'
    )


def doctor(cfg, password: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TILLFACE_MQTT_PASSWORD": password}
    return subprocess.run(
        [sys.executable, "-m", "tillface", "doctor", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
    )


def broker_line(out: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in out.stdout.splitlines() if line.split()[1] == "broker")


def test_tls_client_certificate_and_password(faces_dir, tmp_path, monkeypatch):
    certs = make_ca(tmp_path / "pki")
    broker = Mosquitto(
        tmp_path / "broker", tls=certs, passwords={"till-s1-t1": PASSWORD, "store": "store-pw"}
    ).start()
    try:
        _scenario, cfg, _config = make_unit(faces_dir, tmp_path, broker.port, members=1, strangers=1)
        text = cfg.read_text()
        cfg.write_text(text[: text.index("[mqtt]")] + tls_section(broker.port, certs))

        ok = doctor(cfg, PASSWORD)
        assert broker_line(ok).startswith("ok") and "TLS" in broker_line(ok), ok.stdout
        wrong_pw = doctor(cfg, "not-the-password")
        assert broker_line(wrong_pw).startswith("FAIL") and "mqtt.username/password" in broker_line(wrong_pw)
        other = tmp_path / "other.toml"
        other.write_text(text[: text.index("[mqtt]")] + tls_section(broker.port, certs, ca="other_ca"))
        bad_ca = doctor(other, PASSWORD)
        assert broker_line(bad_ca).startswith("FAIL") and "mqtt.tls/mqtt.ca_file" in broker_line(bad_ca)

        peer = Peer(
            broker.port,
            ["tillface/s1/t1/event/#"],
            tls={
                "ca_certs": str(certs["ca"]),
                "certfile": str(certs["client_cert"]),
                "keyfile": str(certs["client_key"]),
            },
            username=("store", "store-pw"),
        )
        monkeypatch.setenv("TILLFACE_MQTT_PASSWORD", PASSWORD)
        events = tmp_path / "events.jsonl"
        daemon = Daemon(load_config(cfg), cfg, events, lockstep_replay=True)
        assert daemon.run() == 0
        ids = {json.loads(line)["event_id"] for line in events.read_text().splitlines()}
        assert ids
        peer.wait_for(lambda ms: ids <= {m.json()["event_id"] for m in ms})
        peer.close()
    finally:
        broker.stop()
    # The password never reaches the logs or the broker's log.
    assert PASSWORD not in broker.log()
