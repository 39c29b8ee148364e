"""Reads `contract/asyncapi.yaml` and validates MQTT messages against it (topic → channel → payload)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "contract" / "asyncapi.yaml"
BASE_URI = "urn:tillface:contract:asyncapi"


def pointer_get(doc: Any, pointer: str) -> Any:
    """The value at a JSON pointer ('/a/b'), RFC 6901 escapes included."""
    node = doc
    parts = pointer.split("/")[1:] if pointer else []
    for part in (p.replace("~1", "/").replace("~0", "~") for p in parts):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@dataclass(frozen=True)
class Channel:
    id: str
    address: str
    pattern: re.Pattern[str]
    message_pointers: tuple[str, ...]  # JSON pointers of the (resolved) message objects
    actions: frozenset[str]  # what the unit does on it: send and/or receive
    retain: bool | None  # the send operation's mqtt binding


class Contract:
    def __init__(self, path: Path = CONTRACT) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(BASE_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}
        actions: dict[str, set[str]] = {}
        retain: dict[str, bool] = {}
        for op in self.doc["operations"].values():
            channel_id = self.ref_pointer(op["channel"]["$ref"]).rsplit("/", 1)[-1]
            actions.setdefault(channel_id, set()).add(op["action"])
            if op["action"] == "send":
                retain[channel_id] = op["bindings"]["mqtt"]["retain"]
        self.channels: list[Channel] = []
        for channel_id, channel in self.doc["channels"].items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(channel["address"])) + "$"
            messages = tuple(self.follow(m["$ref"])[0] for m in channel["messages"].values())
            self.channels.append(
                Channel(
                    channel_id,
                    channel["address"],
                    re.compile(regex),
                    messages,
                    frozenset(actions.get(channel_id, ())),
                    retain.get(channel_id),
                )
            )

    @staticmethod
    def ref_pointer(ref: str) -> str:
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are used in the contract, not {ref}")
        return ref[1:]

    def follow(self, ref: str) -> tuple[str, Any]:
        """(pointer, object) of an AsyncAPI reference, following chains of references."""
        pointer = self.ref_pointer(ref)
        node = pointer_get(self.doc, pointer)
        while isinstance(node, dict) and set(node) == {"$ref"}:
            pointer = self.ref_pointer(node["$ref"])
            node = pointer_get(self.doc, pointer)
        return pointer, node

    def channel_for(self, topic: str) -> Channel | None:
        found = [c for c in self.channels if c.pattern.match(topic)]
        if len(found) > 1:
            raise AssertionError(f"{topic} matches several channels: {[c.id for c in found]}")
        return found[0] if found else None

    def validator(self, message_pointer: str) -> Draft202012Validator:
        """A validator of a message's payload; `$ref`s resolve inside the whole document."""
        if message_pointer not in self._validators:
            schema = {"$ref": f"{BASE_URI}#{message_pointer}/payload"}
            self._validators[message_pointer] = Draft202012Validator(schema, registry=self.registry)
        return self._validators[message_pointer]

    def decode(self, message_pointer: str, payload: bytes) -> Any:
        message = pointer_get(self.doc, message_pointer)
        content_type = message.get("contentType", self.doc.get("defaultContentType"))
        text = payload.decode("utf-8")
        return json.loads(text) if content_type == "application/json" else text

    def problems(self, topic: str, payload: bytes) -> list[str]:
        """Why a message breaks the contract (empty when it conforms to one of its channel's messages)."""
        channel = self.channel_for(topic)
        if channel is None:
            return [f"{topic}: no channel of the contract has this address"]
        found: list[str] = []
        for pointer in channel.message_pointers:
            try:
                value = self.decode(pointer, payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                found.append(f"{topic}: {pointer}: payload cannot be decoded: {exc}")
                continue
            errors = [
                f"{topic}: {pointer}: {'/'.join(map(str, e.absolute_path)) or 'payload'}: {e.message}"
                for e in self.validator(pointer).iter_errors(value)
            ]
            if not errors:
                return []
            found += errors
        return found
