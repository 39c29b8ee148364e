"""The broker we ship is closed: a real mosquitto runs config/mosquitto/tillface-store.conf (only ports,
file paths and its log folder changed) with accounts made by `tillface store-admin provision-store /
provision-till / revoke-till`, on its loopback listener and its TLS listener (a CA made at test time).

Anonymous and wrong-password clients are refused; till t1 cannot publish on t2's topics, on any cmd/
topic (its own included) or outside the store, nor receive t2's events; the store account reads every
till and writes commands and the gallery; a revoked or rotated account is refused after a reload; and a
real till (`tillface run`) connects with nothing but its bundle (CREDENTIALS_DIRECTORY + till.toml).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mosquitto import Mosquitto
from mqtt_peer import Peer
from till_process import Till
from tillface.security import layout
from tillface.security.provisioning import Provisioner, check_password, hash_password, read_passwords
from tls_ca import make_ca

STORE = "s1"
BASE = f"tillface/{STORE}"


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillface", "store-admin", *args], capture_output=True, text=True, timeout=60
    )


class Store:
    """A store's keys folder and store.toml, provisioned with the real CLI."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.keys = work / "keys"
        self.config = work / "store.toml"
        self.config.write_text(f'[store]\nid = "{STORE}"\n[keys]\ndir = "{self.keys}"\n')
        self.bundles: dict[str, Path] = {}

    def provision_store(self) -> subprocess.CompletedProcess[str]:
        out = admin("provision-store", "--config", str(self.config))
        assert out.returncode == 0, out.stderr
        return out

    def provision(self, till: str, *extra: str) -> subprocess.CompletedProcess[str]:
        bundle = self.work / f"bundle-{till}"
        out = admin(
            "provision-till", "--till", till, "--config", str(self.config), "--out", str(bundle), *extra
        )
        assert out.returncode == 0, out.stderr
        self.bundles[till] = bundle
        return out

    def password(self, till: str) -> str:
        return (self.bundles[till] / layout.MQTT_PASSWORD).read_text()

    def store_login(self) -> tuple[str, str]:
        return layout.store_account(STORE), Provisioner(self.keys, STORE).store_password()

    def till_login(self, till: str) -> tuple[str, str]:
        return layout.broker_account(STORE, till), self.password(till)


def connack(port: int, login: tuple[str, str] | None, tls: dict[str, Any] | None = None) -> str:
    """The broker's answer to a CONNECT: 'Success' or its refusal reason."""
    answer: list[str] = []
    done = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}", protocol=mqtt.MQTTv5
    )
    if tls:
        client.tls_set(**tls)
    if login:
        client.username_pw_set(*login)

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer.append(str(reason))
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: done.set()
    client.connect("127.0.0.1", port, 10)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    return answer[0] if answer else "no CONNACK"


class Publisher:
    """A client that records each PUBACK's reason code (MQTT 5: 'Not authorized' for an ACL refusal)."""

    def __init__(self, port: int, login: tuple[str, str], client_id: str) -> None:
        self.acks: dict[int, str] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(*login)
        self.client.on_publish = self._on_publish
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert connected.wait(10), "publisher could not connect"

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self.acks[mid] = str(reason)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> str:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 10), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    s.provision_store()
    s.provision("t1")
    s.provision("t2")
    return s


@pytest.fixture
def broker(tmp_path, store):
    certs = make_ca(tmp_path / "pki")
    b = Mosquitto(tmp_path / "broker", keys_dir=store.keys, tls=certs).start()
    b.certs = certs  # type: ignore[attr-defined]
    yield b
    b.stop()


def test_the_broker_runs_the_shipped_configuration(broker):
    shipped = (Path(__file__).resolve().parents[1] / "config/mosquitto/tillface-store.conf").read_text()
    conf = broker.conf.read_text()
    for line in ("allow_anonymous false", "per_listener_settings false", "max_queued_messages 0"):
        assert line in shipped and line in conf, line
    assert f"listener {broker.tls_port} 127.0.0.1" in conf and "tls_version tlsv1.2" in conf
    assert "allow_anonymous true" not in conf


def test_anonymous_and_wrong_passwords_are_refused(broker, store):
    tls = {"ca_certs": str(broker.certs["ca"])}
    for port, how in ((broker.port, None), (broker.tls_port, tls)):
        assert connack(port, None, how) == "Not authorized", port
        assert (
            connack(port, (layout.broker_account(STORE, "t1"), "not-the-password"), how) == "Not authorized"
        )
        # t2's password is no key to t1's account
        assert (
            connack(port, (layout.broker_account(STORE, "t1"), store.password("t2")), how) == "Not authorized"
        )
        assert connack(port, store.till_login("t1"), how) == "Success", port
        assert connack(port, store.store_login(), how) == "Success", port
    assert "not authorised" in broker.log()


def test_a_till_is_confined_to_its_own_topics(broker, store):
    spy = Peer(broker.port, [f"{BASE}/#", "#"], client_id="store-spy", username=store.store_login())
    t1 = Publisher(broker.port, store.till_login("t1"), "tillface-s1-t1")
    try:
        refused = {
            topic: t1.publish(topic)
            for topic in (
                f"{BASE}/t2/event/match",
                f"{BASE}/t2/status",
                f"{BASE}/t2/health",
                f"{BASE}/t2/sync",
                f"{BASE}/t2/cmd/display",
                f"{BASE}/t1/cmd/enroll",  # not even its own commands
                f"{BASE}/t1/cmd/display",
                f"{BASE}/gallery/snapshot",
                "tillface/s2/t1/event/match",
                "elsewhere",
            )
        }
        assert all(r == "Not authorized" for r in refused.values()), refused
        allowed = {
            topic: t1.publish(topic)
            for topic in (
                f"{BASE}/t1/event/match",
                f"{BASE}/t1/status",
                f"{BASE}/t1/health",
                f"{BASE}/t1/sync",
                f"{BASE}/gallery/members/m1",
            )
        }
        assert all(r == "Success" for r in allowed.values()), allowed
        spy.wait_for(lambda ms: sum(1 for m in ms if m.topic in allowed) >= len(allowed))
        time.sleep(0.3)
        assert sorted({m.topic for m in spy.messages}) == sorted(allowed)
    finally:
        t1.close()
        spy.close()


def test_a_till_cannot_read_another_tills_events(broker, store):
    # t1 asks for everything; it gets its own command and the gallery, nothing of t2
    t1 = Peer(
        broker.port,
        ["#", f"{BASE}/#", f"{BASE}/t2/#"],
        client_id="tillface-s1-t1",
        username=store.till_login("t1"),
    )
    t2 = Publisher(broker.port, store.till_login("t2"), "tillface-s1-t2")
    server = Publisher(broker.port, store.store_login(), "store-server")
    try:
        for topic in (f"{BASE}/t2/event/match", f"{BASE}/t2/status", f"{BASE}/t2/health", f"{BASE}/t2/sync"):
            assert t2.publish(topic) == "Success"
        assert server.publish(f"{BASE}/t2/cmd/display") == "Success"
        assert server.publish(f"{BASE}/t1/cmd/display") == "Success"
        assert server.publish(f"{BASE}/gallery/members/m9", retain=True) == "Success"
        t1.wait_for(
            lambda ms: {f"{BASE}/t1/cmd/display", f"{BASE}/gallery/members/m9"} <= {m.topic for m in ms}
        )
        time.sleep(0.3)
        assert {m.topic for m in t1.messages} == {f"{BASE}/t1/cmd/display", f"{BASE}/gallery/members/m9"}
    finally:
        for c in (t1, t2, server):
            c.close()


def test_the_store_account_reads_every_till_and_writes_commands_and_the_gallery(broker, store):
    server = Peer(
        broker.port,
        [f"{BASE}/+/event/#", f"{BASE}/+/status"],
        client_id="store-s1",
        username=store.store_login(),
    )
    t1 = Peer(
        broker.port,
        [f"{BASE}/t1/cmd/+", f"{BASE}/gallery/members/+"],
        client_id="tillface-s1-t1",
        username=store.till_login("t1"),
    )
    t2 = Publisher(broker.port, store.till_login("t2"), "tillface-s1-t2")
    writer = Publisher(broker.port, store.store_login(), "store-s1-writer")
    try:
        assert t2.publish(f"{BASE}/t2/event/visitor") == "Success"
        assert t2.publish(f"{BASE}/t2/status", b"online", retain=True) == "Success"
        server.wait_for(lambda ms: {f"{BASE}/t2/event/visitor", f"{BASE}/t2/status"} <= {m.topic for m in ms})
        assert writer.publish(f"{BASE}/t1/cmd/enroll") == "Success"
        assert writer.publish(f"{BASE}/gallery/members/m1", b'{"erased": true}', retain=True) == "Success"
        t1.wait_for(
            lambda ms: {f"{BASE}/t1/cmd/enroll", f"{BASE}/gallery/members/m1"} <= {m.topic for m in ms}
        )
        # but not another store's, nor outside the root
        assert writer.publish("tillface/s2/t1/cmd/enroll") == "Not authorized"
        assert writer.publish("elsewhere") == "Not authorized"
    finally:
        for c in (server, t1, t2, writer):
            c.close()


def test_a_revoked_till_is_refused_after_a_reload(broker, store):
    login = store.till_login("t2")
    assert connack(broker.port, login) == "Success"
    connected = Peer(broker.port, [f"{BASE}/t2/cmd/+"], client_id="tillface-s1-t2", username=login)
    out = admin("revoke-till", "--till", "t2", "--config", str(store.config))
    assert out.returncode == 0, out.stderr
    assert "systemctl reload mosquitto" in out.stdout
    assert not layout.till_public_key(store.keys, "t2").exists()
    assert f"user {layout.broker_account(STORE, 't2')}" not in (store.keys / "mosquitto/acl").read_text()
    assert f"user {layout.broker_account(STORE, 't1')}" in (store.keys / "mosquitto/acl").read_text()
    broker.reload()
    try:
        assert connack(broker.port, login) == "Not authorized"
        # the session that was open is closed by the reload too
        deadline = time.monotonic() + 5
        while connected._connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not connected._connected.is_set(), "the revoked till's open connection survived the reload"
        assert connack(broker.port, store.till_login("t1")) == "Success"
    finally:
        connected.client.loop_stop()
    again = admin("revoke-till", "--till", "t2", "--config", str(store.config))
    assert again.returncode == 1 and "t2 is not provisioned" in again.stderr


def test_provisioning_again_rotates_the_password_and_the_signing_key(broker, store):
    old_password = store.password("t1")
    old_key = layout.till_public_key(store.keys, "t1").read_bytes()
    out = store.provision("t1")
    assert "rotated" in out.stdout
    assert store.password("t1") != old_password
    assert layout.till_public_key(store.keys, "t1").read_bytes() != old_key
    broker.reload()
    assert connack(broker.port, (layout.broker_account(STORE, "t1"), old_password)) == "Not authorized"
    assert connack(broker.port, store.till_login("t1")) == "Success"


def test_the_bundle_and_the_keys_folder(store):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    bundle = store.bundles["t1"]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    for name in (layout.MQTT_PASSWORD, layout.TILL_SIGNING_KEY, layout.STORE_GALLERY_KEY):
        assert stat.S_IMODE((bundle / name).stat().st_mode) == 0o600, name
    private = serialization.load_pem_private_key((bundle / layout.TILL_SIGNING_KEY).read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    public = serialization.load_pem_public_key(layout.till_public_key(store.keys, "t1").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(private.sign(b"x"), b"x")  # the store keeps the till's own public key
    store_pub = serialization.load_pem_public_key((bundle / layout.STORE_SIGNING_PUB).read_bytes())
    store_key = serialization.load_pem_private_key((store.keys / layout.STORE_SIGNING_KEY).read_bytes(), None)
    assert isinstance(store_key, Ed25519PrivateKey) and isinstance(store_pub, Ed25519PublicKey)
    store_pub.verify(store_key.sign(b"y"), b"y")
    assert (bundle / layout.STORE_GALLERY_KEY).read_bytes() == (
        store.keys / layout.STORE_GALLERY_KEY
    ).read_bytes()
    assert len((store.keys / layout.STORE_GALLERY_KEY).read_bytes()) == 32
    for name in (layout.STORE_SIGNING_KEY, layout.STORE_GALLERY_KEY, "store-mqtt.env"):
        assert stat.S_IMODE((store.keys / name).stat().st_mode) == 0o600, name
    settings = tomllib.loads((bundle / layout.TILL_SETTINGS).read_text())
    assert settings["unit"] == {"store_id": STORE, "till_id": "t1"}
    assert settings["mqtt"]["username"] == layout.broker_account(STORE, "t1")
    # the stored entry is mosquitto's PBKDF2-SHA512 format and matches the bundle's password
    entry = read_passwords(store.keys / "mosquitto/passwords")[layout.broker_account(STORE, "t1")]
    assert entry.startswith("$7$101$") and check_password(entry, store.password("t1"))
    assert not check_password(hash_password("other"), store.password("t1"))


def test_no_secret_is_printed(store, tmp_path):
    out = store.provision("t3", "--broker-host", "store.local", "--broker-port", "8883", "--tls")
    printed = out.stdout + out.stderr
    password = store.password("t3")
    assert password not in printed
    assert (store.bundles["t3"] / layout.TILL_SIGNING_KEY).read_text().splitlines()[1] not in printed
    assert store.store_login()[1] not in printed + store.provision_store().stdout
    assert "systemctl reload mosquitto" in printed and str(store.bundles["t3"]) in printed
    mqtt_settings = tomllib.loads((store.bundles["t3"] / layout.TILL_SETTINGS).read_text())["mqtt"]
    assert (mqtt_settings["host"], mqtt_settings["port"], mqtt_settings["tls"]) == ("store.local", 8883, True)


def test_bad_input_is_named(store, tmp_path):
    bad = admin(
        "provision-till", "--till", "t/1", "--config", str(store.config), "--out", str(tmp_path / "b")
    )
    assert bad.returncode == 1 and "--till 't/1'" in bad.stderr and not (tmp_path / "b").exists()
    inside = admin(
        "provision-till", "--till", "t5", "--config", str(store.config), "--out", str(store.keys / "x")
    )
    assert inside.returncode == 1 and "inside the keys folder" in inside.stderr
    nocfg = admin("provision-store", "--config", str(tmp_path / "missing.toml"))
    assert nocfg.returncode == 78 and "store config" in nocfg.stderr


def _state(message) -> str | None:
    """A status message's state (signed JSON since the end-to-end signatures)."""
    try:
        return message.json().get("state")
    except ValueError:
        return None


def test_a_real_till_connects_with_its_bundle(broker, store, tmp_path, monkeypatch):
    """`tillface run` with the bundle as its systemd credentials and till.toml's settings, over TLS."""
    bundle = store.bundles["t1"]
    settings = tomllib.loads((bundle / layout.TILL_SETTINGS).read_text())["mqtt"]
    spy = Peer(
        broker.port, [f"{BASE}/t1/status", f"{BASE}/t1/health"], client_id="spy", username=store.store_login()
    )
    key = tmp_path / "gallery.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    till = Till(tmp_path / "tills", "t1", broker.tls_port, key)
    till.cfg.write_text(
        till.cfg.read_text().replace(
            "health_interval_s = 0.5\n",
            f'health_interval_s = 0.5\nusername = "{settings["username"]}"\ntls = true\n'
            f'ca_file = "{broker.certs["ca"]}"\n',
        )
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(bundle))
    monkeypatch.delenv("TILLFACE_MQTT_PASSWORD", raising=False)
    till.start()
    try:
        spy.wait_for(lambda ms: any(_state(m) == "online" for m in ms if m.topic.endswith("/status")), 60)
        spy.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30)
        assert f"on port {broker.tls_port}" in broker.log()
        assert "as tillface-s1-t1 (p5, c0, k30, u'till-s1-t1')" in broker.log()
    finally:
        till.stop()
        spy.close()
    # the same till with a wrong password is refused and says so
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / layout.MQTT_PASSWORD).write_text("not-it")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "wrong"))
    till.start()
    try:
        deadline = time.monotonic() + 60
        while "refused" not in till.log().lower() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "not authorized" in till.log().lower() or "refused" in till.log().lower(), till.log()[-2000:]
    finally:
        till.stop()


def test_the_shipped_file_works_as_debian_runs_it(tmp_path):
    """The README's installation: the file in conf.d under a main config like Debian's, mosquitto
    dropping to its own user, which must read the provisioned password and ACL files (group mosquitto)
    at start and again on a reload, and the TLS key (0640, group mosquitto)."""
    import grp
    import shutil
    import signal
    import tempfile

    from mosquitto import free_port

    assert os.geteuid() == 0, "mosquitto drops to its own user only when started as root"
    mosquitto_gid = grp.getgrnam("mosquitto").gr_gid
    # Not under pytest's 0700 temp folder: the mosquitto user must reach its files.
    work = Path(tempfile.mkdtemp(prefix="tillface-debian-broker-", dir="/tmp"))
    work.chmod(0o755)
    proc = None
    try:
        store = Store(work)
        store.provision_store()
        store.provision("t1")
        certs = make_ca(work / "pki")
        os.chown(certs["key"], 0, mosquitto_gid)
        certs["key"].chmod(0o640)
        (work / "pki").chmod(0o755)
        for d in ("db", "log", "conf.d"):
            (work / d).mkdir()
            shutil.chown(work / d, "mosquitto", "mosquitto")
        port, tls_port = free_port(), free_port()
        shipped = (Path(__file__).resolve().parents[1] / "config/mosquitto/tillface-store.conf").read_text()
        replacements = {
            "/var/lib/tillface-store/keys": str(store.keys),
            "/etc/mosquitto/certs/tillface-broker.pem": str(certs["cert"]),
            "/etc/mosquitto/certs/tillface-broker.key": str(certs["key"]),
            "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
            "listener 8883\n": f"listener {tls_port} 127.0.0.1\n",
        }
        for old, new in replacements.items():
            assert old in shipped, old
            shipped = shipped.replace(old, new)
        (work / "conf.d/tillface-store.conf").write_text(shipped)
        main = work / "mosquitto.conf"  # Debian's /etc/mosquitto/mosquitto.conf, paths moved
        main.write_text(
            f"persistence true\npersistence_location {work}/db/\n"
            f"log_dest file {work}/log/mosquitto.log\ninclude_dir {work}/conf.d\n"
        )
        proc = subprocess.Popen(["mosquitto", "-c", str(main)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while connack_or_none(port, None) is None:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.1)
        uid_line = next(
            x for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if x.startswith("Uid:")
        )
        assert int(uid_line.split()[1]) == __import__("pwd").getpwnam("mosquitto").pw_uid, uid_line
        tls = {"ca_certs": str(certs["ca"])}
        assert connack(port, None) == "Not authorized"
        assert connack(port, store.till_login("t1")) == "Success"
        assert connack(tls_port, store.till_login("t1"), tls) == "Success"
        assert connack(tls_port, store.store_login(), tls) == "Success"
        # A till provisioned later: `systemctl reload mosquitto` (SIGHUP), read as the mosquitto user.
        store.provision("t2")
        assert connack(tls_port, store.till_login("t2"), tls) == "Not authorized"
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while connack(tls_port, store.till_login("t2"), tls) != "Success":
            assert time.monotonic() < deadline, (work / "log/mosquitto.log").read_text()
            time.sleep(0.2)
        assert "Error" not in (work / "log/mosquitto.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def connack_or_none(port: int, login: tuple[str, str] | None) -> str | None:
    try:
        return connack(port, login)
    except OSError:
        return None
