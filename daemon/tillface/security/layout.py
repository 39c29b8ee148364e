"""Where key material lives, on the store server and on a till. One owner for these names, so that
`tillface store-admin provision-till` writes exactly what the till and the store server read.

Store server (`[keys] dir` in store.toml, mode 0700, owned by the store server's user):
    store-signing.key     Ed25519 private key (PEM, PKCS#8), signs commands and tombstones
    store-signing.pub     its public key (PEM, SubjectPublicKeyInfo), given to every till
    store-gallery.key     32 bytes: the store key that encrypts templates on the wire
    tills/<till>.pub      each provisioned till's Ed25519 public key (verifies its events)
    mosquitto/passwords   the broker's password file (mosquitto_passwd format)
    mosquitto/acl         the broker's ACL file

A till's credentials bundle (made by provision-till, installed by `scripts/install.sh --credentials DIR`
into /etc/tillface/credentials/, handed to the daemon by systemd `LoadCredential=`):
    mqtt.password         the till's broker password
    till-signing.key      the till's Ed25519 private key (PEM, PKCS#8)
    store-signing.pub     the store's public key
    store-gallery.key     the store key (templates on the wire)
    till.toml             the non-secret part: store id, till id, broker address and account name
"""

from __future__ import annotations

from pathlib import Path

# Names inside a till's credentials bundle (= systemd credential names on the unit).
MQTT_PASSWORD = "mqtt.password"
TILL_SIGNING_KEY = "till-signing.key"
STORE_SIGNING_PUB = "store-signing.pub"
STORE_GALLERY_KEY = "store-gallery.key"
TILL_SETTINGS = "till.toml"

# Names inside the store server's keys folder.
STORE_SIGNING_KEY = "store-signing.key"
TILLS_DIR = "tills"
BROKER_DIR = "mosquitto"


def till_public_key(keys_dir: Path, till_id: str) -> Path:
    return keys_dir / TILLS_DIR / f"{till_id}.pub"


def broker_account(store_id: str, till_id: str) -> str:
    """A till's broker user name: one account per till, named after it."""
    return f"till-{store_id}-{till_id}"


def store_account(store_id: str) -> str:
    return f"store-{store_id}"
