"""The other end of the link in tests: a real paho client that records what the unit publishes and
sends what a store server would. With a `signer` (signing_keys.StoreKeys().signer or a till's), every
dict it sends is signed as the store server (or that till) would sign it; bytes go as they are."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from signing_keys import sign_for
from tillface.security.signing import Signer


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Peer:
    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "test-peer",
        persistent: bool = False,
        tls: dict[str, Any] | None = None,
        username: tuple[str, str] | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.signer = signer
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topics = topics
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(*username)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.client.reconnect_delay_set(1, 1)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, 30, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("test peer could not connect")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])
        time.sleep(0.05)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain), time.monotonic())
            )
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[Received]:
        """Wait until predicate(messages) is truthy; returns the messages."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met; got {[m.topic for m in self.messages][-20:]}")
                self._cond.wait(left)
            return list(self.messages)

    def on(self, suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def send(
        self, topic: str, payload: bytes | str | dict[str, Any], retain: bool = False, sign: bool = True
    ) -> None:
        if isinstance(payload, dict):
            if sign and self.signer is not None:
                payload = sign_for(self.signer, topic, payload)
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
