"""`tillface store-admin ...`: the store server's administration commands, run on the store server by
its operator (they read the store's database and keys folder directly, never over the network)."""

from __future__ import annotations

import argparse

from . import keys_admin
from .provision import register as register_provisioning


def register(sub: argparse._SubParsersAction) -> None:
    """Adds each admin command (API keys, till provisioning) to `tillface store-admin`."""
    keys_admin.register(sub)  # key-create, key-list, key-revoke
    register_provisioning(sub)  # provision-store, provision-till, revoke-till
