"""`tillface store-admin key-create | key-list | key-revoke`: the store API's keys (`store.auth`).

They open the store database named by `--database-url`, or by `--config store.toml`'s
`[store] database_url` (default sqlite:///store.db), directly: run them on the store server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROLES = ("till-pos", "cashier", "manager")  # = store.auth.ROLES (not imported: no SQLAlchemy at parse time)


def register(sub: argparse._SubParsersAction) -> None:
    def database_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="the store server's store.toml (its [store] database_url)")
        p.add_argument("--database-url", help="SQLAlchemy URL of the store database (overrides --config)")

    p = sub.add_parser("key-create", help="create an API key for the store's HTTP API (shown once)")
    p.add_argument(
        "--role", required=True, choices=ROLES, help="what the key may do (README: Store API access)"
    )
    p.add_argument("--name", required=True, help="who or what holds it, e.g. 'till 3 POS' or 'front desk'")
    database_args(p)
    p.set_defaults(func=cmd_key_create)

    p = sub.add_parser("key-list", help="list the API keys (id, name, role, created, last used, revoked)")
    database_args(p)
    p.set_defaults(func=cmd_key_list)

    p = sub.add_parser("key-revoke", help="revoke an API key (refused from its next request on)")
    p.add_argument("id", help="the key's id (key-list shows them)")
    database_args(p)
    p.set_defaults(func=cmd_key_revoke)


def _sessions(args: argparse.Namespace) -> Any:
    """The store database's session factory, or an int exit status after saying what is wrong."""
    from sqlalchemy.exc import SQLAlchemyError

    from .config import load_store_config
    from .db import open_database

    try:
        config = load_store_config(args.config, {"store": {"database_url": args.database_url}})
    except (OSError, ValueError) as exc:
        print(f"store config: {exc}", file=sys.stderr)
        return 78
    url = config.store.database_url
    try:
        return open_database(url)
    except (SQLAlchemyError, ImportError) as exc:
        print(f"store.database_url: cannot open {url}: {exc}", file=sys.stderr)
        return 1


def cmd_key_create(args: argparse.Namespace) -> int:
    from .auth import create_key

    sessions = _sessions(args)
    if isinstance(sessions, int):
        return sessions
    try:
        key_id, key = create_key(sessions, args.role, args.name)
    except ValueError as exc:
        print(f"key-create: {exc}", file=sys.stderr)
        return 2
    print(f"id:   {key_id}\nrole: {args.role}\nname: {args.name.strip()}\nkey:  {key}")
    print(
        "The key is shown only this once (the store keeps its SHA-256 only): give it to its holder now,\n"
        "who sends it as 'Authorization: Bearer <key>'. Revoke it with: tillface store-admin key-revoke "
        f"{key_id}",
        file=sys.stderr,
    )
    return 0


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def cmd_key_list(args: argparse.Namespace) -> int:
    from .auth import list_keys

    sessions = _sessions(args)
    if isinstance(sessions, int):
        return sessions
    keys = list_keys(sessions)
    if not keys:
        print("no API keys yet: tillface store-admin key-create --role ROLE --name NAME", file=sys.stderr)
        return 0
    rows = [("ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED")]
    rows += [
        (k["id"], k["name"], k["role"], _when(k["created"]), _when(k["last_used"]), _when(k["revoked"]))
        for k in keys
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    from .auth import revoke_key

    sessions = _sessions(args)
    if isinstance(sessions, int):
        return sessions
    try:
        revoked = revoke_key(sessions, args.id)
    except KeyError:
        print(f"key-revoke: no key {args.id} (tillface store-admin key-list shows them)", file=sys.stderr)
        return 1
    print(f"key {args.id} {'revoked' if revoked else 'was revoked already'}")
    return 0
