"""The reference store server (`tillface store`, the `store` extra): the other end of the MQTT link.

- Subscribes to `<root>/<store>/+/event/#`, `+/health` and `+/status` with a persistent MQTT 5 session
  (QoS 1), validates every payload with the link's own models and drops a re-delivered `event_id`.
- Keeps members, consents, visits, receipts and points in SQLAlchemy 2 (SQLite by default, PostgreSQL
  with a `postgresql+psycopg://` URL); the schema is kept by Alembic (`migrations/`).
- Answers `event/match` with `cmd/display` (name, points, last purchase, suggestions by item
  co-occurrence, see `db.suggestions`) to that till at once.
- HTTP API (FastAPI, `/openapi.json`): `GET /visitors`, `POST /members` (consent + `cmd/enroll`, waits
  for `event/enrolled`), `GET /members/{id}`, `POST /receipts` (points: `store.points_per_unit` per whole
  currency unit, rounded down), `DELETE /members/{id}` (retained tombstone, waits for the online tills'
  `event/erased`), `GET /tills`, `GET /audit`. Every call needs an API key of a role the endpoint allows
  (`auth.py`; `tillface store-admin key-create`, `keys_admin.py`); enrolments, erasures and points are
  audited in the same transaction (`audit.py`).

Settings: `config.py` (a TOML file and/or flags).
"""
