"""The store server's settings: a TOML file (`tillface store --config store.toml`) and/or flags.

```toml
[store]
id = "s1"
database_url = "sqlite:///store.db"   # or postgresql+psycopg://user@host/db
points_per_unit = 1.0                 # points per whole currency unit of a receipt's total
phone_region = "GB"                   # region for phone numbers written without +country ("" = E.164 only)
max_points_per_receipt = 10000        # a receipt that would award more is refused (422), nothing written
language = "en"                       # the cashier page's language: en, ru or zh (`?lang=` overrides)
consent_version = "2026-01"           # the consent text's version the cashier page shows and records
close_score = 0.6                     # the cashier page marks a match scoring below this "close"

[mqtt]
host = "127.0.0.1"
port = 1883
root = "tillface"
tls = false                            # ca_file, cert_file, key_file; username, password_env

[http]
host = "127.0.0.1"                    # not loopback: needs cert_file + key_file and an API key, or no start
port = 8080
# cert_file = "/etc/tillface/store-https.crt"   # TLS (PEM certificate chain); both or neither
# key_file = "/etc/tillface/store-https.key"    # its private key (0600, the store server's user)
allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]  # Host headers answered (DNS-rebinding defence);
                                      # the bind address, if an address, is added
receipts_per_minute = 60              # per API key; more get 429 with Retry-After
```

The HTTP API needs an API key on every call (`tillface store-admin key-create`; README, "Store API
access"). Keys live hashed in the database, never in this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..link.schemas import Id


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSection(_Section):
    id: Id = "s1"
    database_url: str = "sqlite:///store.db"
    points_per_unit: float = Field(default=1.0, ge=0)
    phone_region: str = ""
    enroll_timeout_s: float = Field(default=10.0, gt=0)
    erase_timeout_s: float = Field(default=10.0, gt=0)
    visitors_window_s: float = Field(default=600.0, gt=0)
    max_points_per_receipt: int = Field(default=10_000, ge=0)
    language: Literal["en", "ru", "zh"] = "en"
    consent_version: str = Field(default="2026-01", min_length=1, max_length=64, pattern=r"^\S+$")
    close_score: float = Field(default=0.6, ge=-1, le=1)


class MqttSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    root: Id = "tillface"
    client_id: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_env: str = "TILLFACE_STORE_MQTT_PASSWORD"
    keepalive_s: int = Field(default=30, ge=5)


LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_HOSTS), min_length=1)
    receipts_per_minute: int = Field(default=60, ge=1)


class KeysSection(_Section):
    # Key material of the store server (layout: tillface.security.layout); mode 0700.
    dir: Path = Path("store-keys")


class StoreConfig(_Section):
    store: StoreSection = Field(default_factory=StoreSection)
    keys: KeysSection = Field(default_factory=KeysSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    http: HttpSection = Field(default_factory=HttpSection)


def load_store_config(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> StoreConfig:
    """The file's settings (if any) with `overrides` ({section: {key: value}}, None values ignored)."""
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                data.setdefault(section, {})[key] = value
    return StoreConfig.model_validate(data)
