"""The tests' MQTT broker: the package's throw-away mosquitto on 127.0.0.1 (`tillface.link.broker`)."""

from tillface.link.broker import Mosquitto, free_port

__all__ = ["Mosquitto", "free_port"]
