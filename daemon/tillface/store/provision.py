"""`tillface store-admin provision-store | provision-till | revoke-till`: the store broker's accounts
and ACL, and a till's credentials bundle (tillface.security.provisioning does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..security.provisioning import Provisioner
    from .config import StoreConfig

RELOAD = "sudo systemctl reload mosquitto"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "provision-store",
        help="create or rotate the store server's broker account (its password goes to the keys folder)",
    )
    p.add_argument("--config", type=Path, help="store.toml (default: the built-in defaults)")
    p.set_defaults(func=cmd_provision_store)

    p = sub.add_parser(
        "provision-till",
        help="create or rotate a till's broker account and signing key; write its credentials bundle",
    )
    p.add_argument("--till", required=True, help="the till's id ([unit] till_id on the till)")
    p.add_argument("--config", type=Path, help="store.toml (default: the built-in defaults)")
    p.add_argument("--out", type=Path, required=True, help="folder for the bundle (made 0700)")
    p.add_argument("--broker-host", help="the broker's address as the till sees it (default: [mqtt] host)")
    p.add_argument("--broker-port", type=int, help="the broker's port for the till (default: [mqtt] port)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls", dest="tls", action="store_true", default=None, help="the till connects with TLS"
    )
    tls.add_argument("--no-tls", dest="tls", action="store_false", help="the till connects without TLS")
    p.add_argument("--ca-file", type=Path, help="CA certificate of the broker, copied into the bundle")
    p.set_defaults(func=cmd_provision_till)

    p = sub.add_parser(
        "rotate-store-key",
        help="replace the store key for templates on the wire (a unit lost); then re-provision every till",
    )
    p.add_argument("--config", type=Path, help="store.toml (default: the built-in defaults)")
    p.set_defaults(func=cmd_rotate_store_key)

    p = sub.add_parser("revoke-till", help="remove a till's broker account, its ACL block and its public key")
    p.add_argument("--till", required=True)
    p.add_argument("--config", type=Path, help="store.toml (default: the built-in defaults)")
    p.set_defaults(func=cmd_revoke_till)


def _provisioner(config_path: Path | None) -> tuple[StoreConfig, Provisioner]:
    from ..security.provisioning import Provisioner
    from .config import load_store_config

    config = load_store_config(config_path)
    return config, Provisioner(config.keys.dir, config.store.id, config.mqtt.root)


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"tillface store-admin {command}: {message}", file=sys.stderr)
    return code


def cmd_provision_store(args: argparse.Namespace) -> int:
    from ..security.provisioning import ProvisioningError

    try:
        config, prov = _provisioner(args.config)
    except (OSError, ValueError) as exc:
        return _fail("provision-store", f"store config: {exc}", 78)
    try:
        env, existed = prov.provision_store(config.mqtt.password_env)
    except (ProvisioningError, OSError) as exc:
        return _fail("provision-store", str(exc))
    from ..security.layout import store_account

    print(
        f"store {prov.store}: broker account {store_account(prov.store)} "
        f"{'rotated' if existed else 'created'}; its password is in {env} (0600) as "
        f"{config.mqtt.password_env}=..., for the store server's unit (EnvironmentFile={env})."
    )
    print(f'Set [mqtt] username = "{store_account(prov.store)}" in store.toml, then: {RELOAD}')
    return 0


def cmd_rotate_store_key(args: argparse.Namespace) -> int:
    from ..security.provisioning import ProvisioningError

    try:
        _config, prov = _provisioner(args.config)
    except (OSError, ValueError) as exc:
        return _fail("rotate-store-key", f"store config: {exc}", 78)
    try:
        old, new = prov.rotate_gallery_key()
    except (ProvisioningError, OSError) as exc:
        return _fail("rotate-store-key", str(exc))
    print(
        f"store {prov.store}: store key {old or '(none)'} replaced by {new}. Provision every till again "
        "(tillface store-admin provision-till --till ID --out DIR, then on the till sudo scripts/install.sh "
        "--credentials DIR): each republishes its members under the new key when it next catches up."
    )
    return 0


def cmd_provision_till(args: argparse.Namespace) -> int:
    from ..security import layout
    from ..security.provisioning import ProvisioningError

    try:
        config, prov = _provisioner(args.config)
    except (OSError, ValueError) as exc:
        return _fail("provision-till", f"store config: {exc}", 78)
    m = config.mqtt
    tls = m.tls if args.tls is None else args.tls
    ca_file = args.ca_file if args.ca_file is not None else (m.ca_file if tls else None)
    try:
        bundle = prov.provision_till(
            args.till,
            args.out,
            broker_host=args.broker_host or m.host,
            broker_port=args.broker_port or m.port,
            tls=tls,
            ca_file=ca_file,
            password_env=m.password_env,
        )
    except (ProvisioningError, OSError) as exc:
        return _fail("provision-till", str(exc))
    if bundle.store_created:
        print(
            f"store {prov.store}: broker account {layout.store_account(prov.store)} created; its password "
            f"is in {prov.keys / 'store-mqtt.env'} (0600)"
        )
    print(
        f"till {bundle.till}: broker account {bundle.account} {'rotated' if bundle.rotated else 'created'}, "
        f"ACL regenerated, public key in {layout.till_public_key(prov.keys, bundle.till)}"
    )
    print(f"credentials bundle in {bundle.out} (0700): {', '.join(bundle.files)}")
    print(f"Next: {RELOAD}   # mosquitto re-reads its password and ACL files")
    print(
        f"      copy {bundle.out} to the till (scp -r), run `sudo scripts/install.sh --credentials DIR` "
        "there, then delete the copies"
    )
    return 0


def cmd_revoke_till(args: argparse.Namespace) -> int:
    from ..security.provisioning import ProvisioningError

    try:
        _config, prov = _provisioner(args.config)
    except (OSError, ValueError) as exc:
        return _fail("revoke-till", f"store config: {exc}", 78)
    try:
        gone = prov.revoke_till(args.till)
    except (ProvisioningError, OSError) as exc:
        return _fail("revoke-till", str(exc))
    if not gone:
        return _fail("revoke-till", f"till {args.till} is not provisioned in store {prov.store}")
    print(f"till {args.till} revoked: {'; '.join(gone)}; ACL regenerated")
    print(f"Next: {RELOAD}   # after it, the till can no longer connect")
    return 0
