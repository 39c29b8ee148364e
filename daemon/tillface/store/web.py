"""The cashier's page: `/till/<till_id>`, server-rendered (Jinja2), updated live by server-sent events.

Who may use it: a key of role cashier or manager. The cashier types the key once at `/login`; it is
kept in an HttpOnly, SameSite=Strict cookie (Secure under TLS) and checked on every page, event stream
and form post exactly as the API checks a Bearer key (a revoked key stops working at the next request).
Form posts also carry a CSRF token derived from the key (HMAC), and a cross-site Origin is refused.

Routes (roles):
    GET  /login, POST /login, POST /logout     anyone (the login checks the key's role)
    GET  /till/{till}                          cashier, manager (no or a bad cookie: to /login)
    GET  /till/{till}/events                   cashier, manager (text/event-stream; 401/403 otherwise)
    POST /till/{till}/enrol                    cashier, manager, with the CSRF token (403 otherwise)
    GET  /static/...                           anyone: htmx and its SSE extension (static/NOTICE.md)

Events of the stream: `customer` (member, visitor or idle) and `till` (the till's state and the offline
banner), each an HTML fragment htmx swaps in. Texts come from MESSAGES (en, ru, zh): `[store] language`,
`?lang=` overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from . import audit
from .auth import CASHIER, MANAGER, BadKey, Principal, authenticate
from .service import StoreError, StoreServer

log = logging.getLogger("tillface.store.web")

HERE = Path(__file__).parent
COOKIE = "tillface_key"
ROLES = (CASHIER, MANAGER)
KEEPALIVE_S = 15.0

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "Till",
        "login": "Sign in",
        "login_key": "API key (cashier or manager)",
        "login_go": "Sign in",
        "logout": "Sign out",
        "idle": "Waiting for the next customer",
        "member": "Member",
        "points": "Points",
        "last_purchase": "Last purchase",
        "suggestions": "Suggestions",
        "none": "none",
        "upgrade": "Recognised again with a better view (upgraded match)",
        "close": "Close to the threshold: check the customer",
        "visitor": "Visitor code",
        "enrol": "Enrol with consent",
        "name": "Name",
        "phone": "Phone",
        "channel": "How consent was given",
        "channel_till": "at the till screen",
        "channel_paper": "on paper",
        "consent_text": "I agree that the store keeps a template of my face and my phone number to "
        "recognise me at its tills for the loyalty programme, until I ask to be erased.",
        "consent_version": "Consent text version",
        "consent_tick": "The customer has read the text above and agrees",
        "enrol_go": "Enrol",
        "enrolled": "Enrolled",
        "err_consent": "Not enrolled: the consent box is not ticked. Tick it only if the customer agrees.",
        "err_code": "Not enrolled: there is no visitor to enrol at this till.",
        "err": "Not enrolled",
        "err_csrf": "Refused: the form is stale or from another site; reload the page.",
        "till_state": "Till",
        "online": "online",
        "offline": "offline",
        "unknown": "not heard from yet",
        "camera": "camera",
        "display": "display",
        "link": "link",
        "health": "last health",
        "banner": "This till is offline: faces are not being recognised and enrolment is not possible.",
        "bad_key": "Refused",
    },
    "ru": {
        "title": "Касса",
        "login": "Вход",
        "login_key": "API-ключ (кассир или менеджер)",
        "login_go": "Войти",
        "logout": "Выйти",
        "idle": "Ожидание следующего покупателя",
        "member": "Участник",
        "points": "Баллы",
        "last_purchase": "Последняя покупка",
        "suggestions": "Рекомендации",
        "none": "нет",
        "upgrade": "Узнан повторно по лучшему кадру (уточнённое совпадение)",
        "close": "Близко к порогу: проверьте покупателя",
        "visitor": "Код посетителя",
        "enrol": "Регистрация с согласием",
        "name": "Имя",
        "phone": "Телефон",
        "channel": "Как дано согласие",
        "channel_till": "на экране кассы",
        "channel_paper": "на бумаге",
        "consent_text": "Я согласен(на), что магазин хранит шаблон моего лица и мой номер телефона, "
        "чтобы узнавать меня на кассах по программе лояльности, пока я не попрошу их удалить.",
        "consent_version": "Версия текста согласия",
        "consent_tick": "Покупатель прочитал текст выше и согласен",
        "enrol_go": "Зарегистрировать",
        "enrolled": "Зарегистрирован(а)",
        "err_consent": "Не зарегистрировано: не отмечено согласие. "
        "Отмечайте, только если покупатель согласен.",
        "err_code": "Не зарегистрировано: на этой кассе нет посетителя для регистрации.",
        "err": "Не зарегистрировано",
        "err_csrf": "Отказано: форма устарела или пришла с другого сайта; обновите страницу.",
        "till_state": "Касса",
        "online": "в сети",
        "offline": "не в сети",
        "unknown": "ещё нет данных",
        "camera": "камера",
        "display": "дисплей",
        "link": "связь",
        "health": "последний отчёт",
        "banner": "Касса не в сети: лица не распознаются, регистрация невозможна.",
        "bad_key": "Отказано",
    },
    "zh": {
        "title": "收银台",
        "login": "登录",
        "login_key": "API 密钥（收银员或经理）",
        "login_go": "登录",
        "logout": "退出",
        "idle": "等待下一位顾客",
        "member": "会员",
        "points": "积分",
        "last_purchase": "上次购买",
        "suggestions": "推荐",
        "none": "无",
        "upgrade": "以更好的画面再次识别（升级匹配）",
        "close": "接近阈值：请核对顾客",
        "visitor": "访客代码",
        "enrol": "经同意后登记",
        "name": "姓名",
        "phone": "电话",
        "channel": "同意方式",
        "channel_till": "收银台屏幕",
        "channel_paper": "纸质",
        "consent_text": "我同意本店保存我的面部模板和电话号码，"
        "用于在收银台识别我参加会员计划，直到我要求删除。",
        "consent_version": "同意书版本",
        "consent_tick": "顾客已阅读上述文字并同意",
        "enrol_go": "登记",
        "enrolled": "已登记",
        "err_consent": "未登记：未勾选同意。仅在顾客同意时勾选。",
        "err_code": "未登记：此收银台没有可登记的访客。",
        "err": "未登记",
        "err_csrf": "已拒绝：表单已过期或来自其他网站；请刷新页面。",
        "till_state": "收银台",
        "online": "在线",
        "offline": "离线",
        "unknown": "尚无消息",
        "camera": "摄像头",
        "display": "显示屏",
        "link": "连接",
        "health": "最近健康报告",
        "banner": "此收银台离线：无法识别面孔，也无法登记。",
        "bad_key": "已拒绝",
    },
}
LANGUAGES = tuple(MESSAGES)


@dataclass
class Customer:
    """What the page shows for one till: idle, a member or a visitor."""

    kind: str = "idle"
    visit_id: str | None = None
    member: dict[str, Any] | None = None
    upgrade: bool = False
    close: bool = False
    score: float | None = None
    visitor_code: str | None = None
    enroll_until: str | None = None
    published: float | None = None  # the event's `ts` (epoch seconds), for the page's latency figure


@dataclass
class _Stream:
    till: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


class CashierPage:
    """The page's state per till, fed by the store server's watchers, and the open event streams."""

    def __init__(self, server: StoreServer) -> None:
        self.server = server
        self.customers: dict[str, Customer] = {}
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        server.watchers.append(self.on_event)

    def on_event(self, till: str, kind: str, payload: dict[str, Any]) -> None:
        """On the MQTT worker thread: update the till's state and wake its streams."""
        what = "till"
        if kind in ("match", "visitor", "left"):
            what = "customer"
            current = self.customers.get(till, Customer())
            if kind == "match":
                try:
                    member = self.server.member(payload["member_id"])
                except StoreError:
                    member = None
                score = float(payload["score"])
                current = Customer(
                    "member" if member else "idle",
                    visit_id=payload["visit_id"],
                    member=member,
                    upgrade=bool(payload.get("upgrade")),
                    close=score < self.server.config.store.close_score,
                    score=score,
                    published=_epoch(payload["ts"]),
                )
            elif kind == "visitor":
                current = Customer(
                    "visitor",
                    visit_id=payload["visit_id"],
                    visitor_code=payload["visitor_code"],
                    enroll_until=payload["enroll_until"],
                    published=_epoch(payload["ts"]),
                )
            elif current.visit_id == payload["visit_id"]:
                current = Customer("idle", published=_epoch(payload["ts"]))
            else:
                return
            self.customers[till] = current
        elif kind not in ("health", "status"):
            return
        with self._lock:
            streams = [s for s in self._streams if s.till == till]
        for stream in streams:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, what)

    def open(self, till: str) -> _Stream:
        stream = _Stream(till, asyncio.get_running_loop())
        with self._lock:
            self._streams.append(stream)
        return stream

    def close(self, stream: _Stream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    def till_state(self, till: str) -> dict[str, Any]:
        state = self.server.tills.get(till)
        health = dict(state.health) if state and state.health else None
        return {"status": state.status if state else None, "health": health}


def _epoch(ts: str) -> float | None:
    from .service import parse_ts

    try:
        return parse_ts(ts).timestamp()
    except ValueError:
        return None


def csrf_token(key: str) -> str:
    return hmac.new(key.encode(), b"tillface-cashier-form", hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin or Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def mount_web(app: FastAPI, server: StoreServer) -> CashierPage:
    """Add the cashier's page to the store API `app`; returns its state (for tests)."""
    page = CashierPage(server)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def lang_of(request: Request) -> str:
        lang = request.query_params.get("lang", "")
        return lang if lang in MESSAGES else server.config.store.language

    def who(request: Request) -> tuple[Principal | None, int, str]:
        """The cookie's principal if it may use the page, else (None, HTTP status, why)."""
        key = request.cookies.get(COOKIE)
        if not key:
            return None, 401, "sign in with a cashier or manager API key"
        try:
            principal = authenticate(server.sessions, key)
        except BadKey as exc:
            return None, 401, str(exc)
        if principal.role not in ROLES:
            detail = (
                f"key {principal.key_id} ({principal.role}) may not {request.method} {request.url.path}: "
                f"it needs {' or '.join(ROLES)}"
            )
            log.warning("refused %s", detail)
            audit.record_now(server.sessions, principal.actor(), audit.REFUSED, detail=detail)
            return None, 403, detail
        return principal, 200, ""

    def context(request: Request, till: str, **extra: Any) -> dict[str, Any]:
        lang = lang_of(request)
        return {
            "t": MESSAGES[lang],
            "lang": lang,
            "till": till,
            "customer": page.customers.get(till, Customer()),
            "state": page.till_state(till),
            "consent_version": server.config.store.consent_version,
            **extra,
        }

    def route(path: str, method: str) -> Any:
        """A plain Starlette route (not an API operation: no OpenAPI entry, no Bearer Guard; the cookie
        check `who` is each handler's first step)."""

        def add(handler: Any) -> Any:
            app.router.add_route(path, handler, methods=[method], include_in_schema=False)
            return handler

        return add

    def fragment(name: str, ctx: dict[str, Any]) -> str:
        return templates.get_template(name).render(ctx)

    @route("/login", "GET")
    def login_form(request: Request) -> Response:
        lang = lang_of(request)
        next, error = request.query_params.get("next", "/"), ""
        return templates.TemplateResponse(
            request,
            "login.html",
            {"t": MESSAGES[lang], "lang": lang, "next": _local(next), "error": error},
            headers=NO_STORE,
        )

    @route("/login", "POST")
    async def login(request: Request) -> Response:
        form = _form(await request.body())
        lang = lang_of(request)
        target = _local(form.get("next", "/"))
        if not _same_origin(request):
            return Response("cross-site login refused", status_code=403)
        key = form.get("key", "").strip()
        try:
            principal = authenticate(server.sessions, key)
            if principal.role not in ROLES:
                raise BadKey(
                    f"key {principal.key_id} is a {principal.role} key; the page needs {' or '.join(ROLES)}"
                )
        except BadKey as exc:
            log.warning("cashier page sign-in refused: %s", exc)
            return templates.TemplateResponse(
                request,
                "login.html",
                {"t": MESSAGES[lang], "lang": lang, "next": target, "error": str(exc)},
                status_code=401,
                headers=NO_STORE,
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
        )
        return response

    @route("/logout", "POST")
    def logout(request: Request) -> Response:
        if not _same_origin(request):
            return Response("cross-site request refused", status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @route("/till/{till}", "GET")
    def till_page(request: Request) -> Response:
        till = request.path_params["till"]
        principal, status, why = who(request)
        if principal is None:
            if status == 401:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            return Response(why, status_code=status, media_type="text/plain")
        key = request.cookies[COOKIE]
        return templates.TemplateResponse(
            request,
            "till.html",
            context(request, till, csrf=csrf_token(key), who=principal),
            headers=NO_STORE,
        )

    @route("/till/{till}/events", "GET")
    async def till_events(request: Request) -> Response:
        till = request.path_params["till"]
        principal, status, why = who(request)
        if principal is None:
            return Response(why, status_code=status, media_type="text/plain")
        key = request.cookies[COOKIE]
        stream = page.open(till)

        async def events() -> AsyncIterator[str]:
            try:
                for what in ("till", "customer"):
                    yield _sse(what, render(what))
                while True:
                    try:
                        what = await asyncio.wait_for(stream.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield _sse(what, render(what))
            finally:
                page.close(stream)

        def render(what: str) -> str:
            ctx = context(request, till, csrf=csrf_token(key), who=principal)
            return fragment("customer.html" if what == "customer" else "till_state.html", ctx)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", **NO_BUFFER}
        )

    @route("/till/{till}/enrol", "POST")
    async def enrol(request: Request) -> Response:
        till = request.path_params["till"]
        principal, status, why = who(request)
        if principal is None:
            return Response(why, status_code=status, media_type="text/plain")
        t = MESSAGES[lang_of(request)]
        form = _form(await request.body())
        key = request.cookies[COOKIE]
        if not _same_origin(request) or not hmac.compare_digest(form.get("csrf", ""), csrf_token(key)):
            log.warning("cashier page: enrolment at %s refused: bad CSRF token or cross-site post", till)
            return Response(t["err_csrf"], status_code=403, media_type="text/plain")

        def answer(ok: bool, text: str) -> Response:
            return templates.TemplateResponse(request, "result.html", {"ok": ok, "text": text})

        if form.get("consent") != "yes":
            return answer(False, t["err_consent"])
        code = form.get("visitor_code", "")
        if not code:
            return answer(False, t["err_code"])
        from .api import MemberIn

        try:
            body = MemberIn.model_validate(
                {
                    "phone": form.get("phone", ""),
                    "name": form.get("name", ""),
                    "visitor_code": code,
                    "till": till,
                    "consent": {
                        "text_version": server.config.store.consent_version,
                        "channel": form.get("channel", ""),
                    },
                }
            )
        except ValidationError as exc:
            words = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            return answer(False, f"{t['err']}: {words}")
        try:
            with audit.acting(principal.actor(), audit.ENROL):
                member = await asyncio.to_thread(
                    server.enroll,
                    body.phone,
                    body.name,
                    body.visitor_code,
                    body.till,
                    body.consent.text_version,
                    body.consent.channel,
                )
        except StoreError as exc:
            detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            return answer(False, f"{t['err']}: {detail}")
        return answer(True, f"{t['enrolled']}: {member['name']} ({member['id']})")

    return page


NO_STORE = {"Cache-Control": "no-store"}
NO_BUFFER = {"X-Accel-Buffering": "no"}


def _form(body: bytes) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each)."""
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _local(target: str) -> str:
    """`target` if it is a path on this server, else `/` (no open redirect after sign-in)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _sse(event: str, html: str) -> str:
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\n{data}\n"
