"""HTTP clients of the store API for tests, one per role, each with a real key made by the store's own
`create_key` (the code behind `tillface store-admin key-create`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tillface.store.api import create_app
from tillface.store.auth import create_key
from tillface.store.service import StoreServer

BASE_URL = "http://127.0.0.1"  # a Host the API answers by default ([http] allowed_hosts)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Clients:
    """`pos` (till-pos), `desk` (cashier), `boss` (manager) and `anonymous` (no key) on one app."""

    def __init__(self, server: StoreServer, app: FastAPI | None = None) -> None:
        self.app = app or create_app(server)
        self.keys: dict[str, tuple[str, str]] = {}
        for role, name in (
            ("till-pos", "till 1 POS"),
            ("cashier", "front desk"),
            ("manager", "store manager"),
        ):
            self.keys[role] = create_key(server.sessions, role, name)
        self.anonymous = TestClient(self.app, base_url=BASE_URL)
        self.pos = self.client("till-pos")
        self.desk = self.client("cashier")
        self.boss = self.client("manager")

    def client(self, role: str) -> TestClient:
        return TestClient(self.app, base_url=BASE_URL, headers=bearer(self.keys[role][1]))
