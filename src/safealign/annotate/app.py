"""The annotation studio's web application: server-rendered pages, a little plain JavaScript, every asset local.

Every page and endpoint needs a login (scrypt-hashed passwords, a random session token in an
HttpOnly SameSite=Strict cookie, `Secure` behind HTTPS); every state-changing request carries
a CSRF token (forms: a hidden field; JSON posts: the X-CSRF-Token header). Annotators get
only their own queue; the admin pages need the admin role. Bodies are bounded (413), JSON
and labels are checked (400 / 422 naming the field), unknown items are 404: nothing is
stored from a refused request, and an answer is confirmed only after its transaction commits.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from safealign.annotate.agreement import agreement
from safealign.annotate.labels import FIELDS, LabelError, majority, parse_labels
from safealign.annotate.store import CurrentUser, Store, StoreError
from safealign.data.taxonomy import PKU_CATEGORIES, SEVERITY_LEVELS
from safealign.moderation.server import ApiError, read_body

HERE = Path(__file__).parent
SESSION_COOKIE = "safealign_session"
LOGIN_COOKIE = "safealign_login"
STATIC = {"studio.css": "text/css", "studio.js": "text/javascript"}
CATEGORY_KEYS = "qwertyuiopasdfghjkl"  # one key per PKU category, in taxonomy order


def script_json(value: Any) -> str:
    """JSON safe to put inside a <script> element (no "</script>" can close it early)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def units_by_field(answers: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """For each label field, per item, {annotator: value} over the labelled answers."""
    per_item: dict[int, dict[str, dict[str, Any]]] = {}
    for a in answers:
        if a["labels"] is None:
            continue
        values = parse_labels(a["labels"]).field_values()
        for name in FIELDS:
            per_item.setdefault(a["item_id"], {}).setdefault(name, {})[a["user"]] = values[name]
    return {name: [fields[name] for fields in per_item.values() if name in fields] for name in FIELDS}


def disagreements(answers: list[dict[str, Any]]) -> dict[int, list[str]]:
    """{item id: fields on which its annotators differ} (items with a flag count as a difference too)."""
    per_item: dict[int, list[dict[str, Any]]] = {}
    for a in answers:
        per_item.setdefault(a["item_id"], []).append(a)
    out = {}
    for item_id, rows in per_item.items():
        labelled = [parse_labels(a["labels"]).field_values() for a in rows if a["labels"] is not None]
        differ = [name for name in FIELDS if len({v[name] for v in labelled}) > 1]
        if any(a["status"] == "flagged" for a in rows):
            differ.append("flagged")
        if differ:
            out[item_id] = differ
    return out


def create_app(store: Store, secure_cookies: bool = False, max_body: int = 64 * 1024) -> FastAPI:
    """The studio over `store`."""
    app = FastAPI(title="safealign annotation studio", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    templates.globals.update(categories=list(zip(PKU_CATEGORIES.categories, CATEGORY_KEYS)), severities=SEVERITY_LEVELS)

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context), status)

    def user_of(request: Request) -> CurrentUser | None:
        return store.session_user(request.cookies.get(SESSION_COOKIE))

    async def api_user(request: Request, admin: bool = False) -> CurrentUser:
        user = await run_in_threadpool(user_of, request)
        if user is None:
            raise ApiError(401, "log in first", "authentication_error")
        token = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), user.csrf.encode()):
            raise ApiError(403, "missing or wrong X-CSRF-Token", "permission_error")
        if admin and user.role != "admin":
            raise ApiError(403, "this needs the admin role", "permission_error")
        return user

    async def json_body(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError(415, "send application/json")
        body = await read_body(request, max_body)
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the body must be a JSON object")
        return value

    async def form_body(request: Request) -> dict[str, str]:
        body = await read_body(request, max_body)
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ApiError(400, "the form is not UTF-8") from None
        return {k: v[0] for k, v in fields.items()}

    def item_id_of(value: dict[str, Any]) -> int:
        item_id = value.get("item_id")
        if type(item_id) is not int:
            raise ApiError(422, "item_id: expected an integer", param="item_id")
        return item_id

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        return ApiError(exc.status, str(exc)).response()

    @app.exception_handler(LabelError)
    async def label_error(request: Request, exc: LabelError) -> Response:
        return ApiError(422, str(exc), param=exc.field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return ApiError(exc.status_code, str(exc.detail)).response()
        return page("message.html", exc.status_code, title=f"{exc.status_code}", message=str(exc.detail), user=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise StarletteHTTPException(404, "no such file")
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/login")
    def login_page(request: Request, error: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = page("login.html", 401 if error else 200, token=token, error=error, user=None)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies, max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_body(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not hmac.compare_digest(form.get("csrf", "").encode(), cookie.encode()):
            return login_page(request, "The form expired; try again.")
        result = await run_in_threadpool(store.login, form.get("name", ""), form.get("password", ""))
        if result is None:
            return login_page(request, "Wrong name or password.")
        token, user = result
        response = RedirectResponse("/admin" if user.role == "admin" else "/annotate", 303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        user = await run_in_threadpool(user_of, request)
        form = await form_body(request)
        if user is not None and hmac.compare_digest(form.get("csrf", "").encode(), user.csrf.encode()):
            store.logout(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/")
    def home(request: Request) -> Response:
        user = user_of(request)
        if user is None:
            return RedirectResponse("/login", 303)
        return RedirectResponse("/admin" if user.role == "admin" else "/annotate", 303)

    @app.get("/annotate")
    def annotate(request: Request) -> Response:
        user = user_of(request)
        if user is None:
            return RedirectResponse("/login", 303)
        item = store.next_item(user)
        done, total = store.progress(user)
        if item is None:
            return page("message.html", title="Queue empty", user=user,
                        message=f"Nothing left for you: {done} item(s) done. Thank you.")
        return page("annotate.html", user=user, item=item, done=done, total=total, started=time.time(),
                    suggestion=script_json(item.suggestion), mode="annotate", prefill="null")

    @app.post("/api/answers")
    async def answers(request: Request) -> Response:
        user = await api_user(request)
        value = await json_body(request)
        unknown = sorted(set(value) - {"item_id", "status", "labels", "comment", "suggestions_shown", "seconds"})
        if unknown:
            raise ApiError(422, f"{unknown[0]}: unknown field", param=unknown[0])
        item_id = item_id_of(value)
        status = value.get("status", "answered")
        comment, shown, seconds = value.get("comment"), value.get("suggestions_shown", False), value.get("seconds")
        if not isinstance(status, str):
            raise ApiError(422, "status: expected a string", param="status")
        if comment is not None and not isinstance(comment, str):
            raise ApiError(422, "comment: expected a string", param="comment")
        if type(shown) is not bool:
            raise ApiError(422, "suggestions_shown: expected true or false", param="suggestions_shown")
        if seconds is not None and (type(seconds) not in (int, float) or not 0 <= seconds < 86400):
            raise ApiError(422, "seconds: expected a number of seconds", param="seconds")
        answer_id = await run_in_threadpool(store.submit, user, item_id, status, value.get("labels"), comment, shown, seconds)
        return JSONResponse({"saved": True, "answer_id": answer_id})  # sent only after the commit

    @app.get("/admin")
    def admin(request: Request) -> Response:
        user = user_of(request)
        if user is None:
            return RedirectResponse("/login", 303)
        if user.role != "admin":
            raise StarletteHTTPException(403, "The admin pages need the admin role.")
        all_answers = store.answers()
        units = units_by_field(all_answers)
        table = [(name, agreement(units[name])) for name in FIELDS]
        differ = disagreements(all_answers)
        adjudicated = store.adjudications()
        items = {i.id: i for i in store.items()}
        rows = [(items[i], fields, i in adjudicated) for i, fields in sorted(differ.items()) if i in items]
        return page("admin.html", user=user, table=table, counts=store.counts(), rows=rows, users=store.users())

    @app.get("/admin/items/{item_id}")
    def admin_item(request: Request, item_id: int) -> Response:
        user = user_of(request)
        if user is None:
            return RedirectResponse("/login", 303)
        if user.role != "admin":
            raise StarletteHTTPException(403, "The admin pages need the admin role.")
        item = store.item(item_id)
        if item is None:
            raise StarletteHTTPException(404, f"No item {item_id}.")
        rows = store.answers(item_id)
        adjudication = store.adjudications().get(item_id)
        labelled = [parse_labels(a["labels"]) for a in rows if a["labels"] is not None]
        start = adjudication or (m.to_json() if (m := majority(labelled)) else None)
        return page("annotate.html", user=user, item=item, done=0, total=0, started=time.time(), answers=rows,
                    suggestion=script_json(item.suggestion), mode="adjudicate", prefill=script_json(start),
                    adjudicated=adjudication is not None)

    @app.post("/api/adjudications")
    async def adjudications(request: Request) -> Response:
        user = await api_user(request, admin=True)
        value = await json_body(request)
        unknown = sorted(set(value) - {"item_id", "labels"})
        if unknown:
            raise ApiError(422, f"{unknown[0]}: unknown field", param=unknown[0])
        await run_in_threadpool(store.adjudicate, user, item_id_of(value), value.get("labels"))
        return JSONResponse({"saved": True})

    return app
