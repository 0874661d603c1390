"""Building and labelling dual-preference data: agreement by hand, the store, the studio's HTTP surface, import/export, CLIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import DATA, free_port, run_cli, write_jsonl

from safealign.annotate.agreement import cohen_kappa, krippendorff_alpha, raw_agreement
from safealign.annotate.labels import LabelError, majority, parse_labels
from safealign.annotate.store import Store, StoreError, check_password, hash_password

V1 = DATA / "pku_saferlhf/v1_test_sample.jsonl"
SAFE = {"categories": [], "severity": 0}
VIOLENT = {"categories": ["Violence"], "severity": 2}


def labels(r0=SAFE, r1=VIOLENT, better=0, safer=0) -> dict:
    return {"responses": [r0, r1], "better": better, "safer": safer}


# --- agreement and labels, by hand -----------------------------------------------------------


def test_agreement_by_hand():
    # A = [1, 1, 2, 2], B = [1, 2, 2, 2]: p_o = 3/4, p_e = (2·1 + 2·3)/16 = 1/2 -> κ = 0.5.
    assert cohen_kappa([1, 1, 2, 2], [1, 2, 2, 2]) == pytest.approx(0.5)
    # Coincidences o11 = 2, o12 = o21 = 1, o22 = 4; n1 = 3, n2 = 5, n = 8:
    # D_o = 2, D_e = (3·5 + 5·3)/7 = 30/7 -> α = 1 − 14/30.
    units = [{"A": 1, "B": 1}, {"A": 1, "B": 2}, {"A": 2, "B": 2}, {"A": 2, "B": 2}]
    assert krippendorff_alpha(units) == pytest.approx(1 - 14 / 30)
    assert raw_agreement(units) == pytest.approx(3 / 4)
    # Three annotators on one item (1, 1, 2): pairs agree 1 of 3; a unit with one label is left out.
    assert raw_agreement([{"A": 1, "B": 1, "C": 2}, {"A": 5}]) == pytest.approx(1 / 3)
    assert cohen_kappa([1, 1], [1, 1]) is None  # chance agreement 1: κ undefined
    assert krippendorff_alpha([{"A": 1, "B": 1}]) is None
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa([1], [1, 2])


def test_labels_refuse_contradictions_and_majority_needs_a_majority():
    ok = parse_labels(labels(r1={"categories": ["Violence", "Drugs"], "severity": 3}))
    assert ok.responses[1].categories == ("Violence", "Drugs") and ok.responses[0].is_safe and not ok.responses[1].is_safe
    for bad, field in [
        (labels(r0={"categories": ["Violence"], "severity": 0}), "responses[0].severity"),  # a category with severity 0
        (labels(r0={"categories": [], "severity": 2}), "responses[0].categories"),  # unsafe with no category
        (labels(safer=1), "safer"),  # the unsafe response cannot be the safer one
        (labels(r1={"categories": ["Not a category"], "severity": 1}), "responses[1].categories"),
        ({**labels(), "better": "0"}, "better"),
        ({**labels(), "extra": 1}, "extra"),
        (labels(r0={"categories": [], "severity": 4}), "responses[0].severity"),
    ]:
        with pytest.raises(LabelError) as caught:
            parse_labels(bad)
        assert caught.value.field == field
    a, b = parse_labels(labels(better=0)), parse_labels(labels(better=1))
    assert majority([a, b]) is None  # better is tied
    assert majority([a, b, a]).better == 0


def test_passwords_are_salted_scrypt():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored and stored != hash_password("correct horse")
    assert check_password("correct horse", stored) and not check_password("wrong", stored)
    assert not check_password("x", "garbage")


# --- the store ---------------------------------------------------------------------------------


def _store(tmp_path: Path, overlap: int = 2) -> Store:
    return Store(f"sqlite:///{tmp_path / 'studio.db'}", overlap=overlap)


def _items(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_0": f"answer {i} a", "response_1": f"answer {i} b", "system": None,
             "sources": {}, "suggestion": None, "note": None, "origin": f"test:{i}", "meta": None} for i in range(n)]


def test_store_queue_overlap_and_refusals(tmp_path):
    store = _store(tmp_path, overlap=2)
    for name in ("ann1", "ann2", "ann3"):
        store.add_user(name, "password-" + name)
    store.add_user("boss", "password-boss", "admin")
    with pytest.raises(StoreError, match="exists"):
        store.add_user("ann1", "another-password")
    assert store.add_items(_items(2)) == (2, 0) and store.add_items(_items(3)) == (1, 2)  # idempotent import
    assert store.login("ann1", "wrong-password") is None and store.login("nobody", "password-ann1") is None
    users = {name: store.login(name, f"password-{name}")[1] for name in ("ann1", "ann2", "ann3", "boss")}
    first = store.next_item(users["ann1"])
    store.submit(users["ann1"], first.id, "answered", labels())
    assert store.next_item(users["ann1"]).id != first.id  # never the same item twice
    assert store.next_item(users["ann2"]).id == first.id  # fullest first: finish items before opening new ones
    store.submit(users["ann2"], first.id, "answered", labels(better=1))
    with pytest.raises(StoreError, match="has its 2 answer"):  # overlap reached
        store.submit(users["ann3"], first.id, "answered", labels())
    assert store.next_item(users["ann3"]).id != first.id
    with pytest.raises(StoreError, match="no such item"):
        store.submit(users["ann3"], 999, "answered", labels())
    with pytest.raises(StoreError, match="comment"):
        store.submit(users["ann3"], first.id + 1, "flagged")
    with pytest.raises(StoreError, match="admin"):
        store.adjudicate(users["ann1"], first.id, labels())
    store.adjudicate(users["boss"], first.id, labels(better=1))
    assert store.adjudications()[first.id]["better"] == 1
    assert store.counts() == {"items": 3, "adjudicated": 1, "answered": 2}
    assert store.progress(users["ann1"]) == (1, 3)


def test_an_item_shown_is_held_for_its_annotator(tmp_path):
    store = _store(tmp_path, overlap=1)
    store.add_items(_items(3))
    users = []
    for name in ("a1", "a2", "a3", "a4"):
        store.add_user(name, f"password-{name}")
        users.append(store.login(name, f"password-{name}")[1])
    shown = [store.next_item(u).id for u in users[:3]]
    assert shown == [1, 2, 3]  # with overlap 1 nobody is shown an item another annotator holds
    assert store.next_item(users[0]).id == 1  # a reload shows the same item
    store.submit(users[0], 1, "answered", labels())
    assert store.next_item(users[0]).id not in (1,) and store.next_item(users[3]) is not None
    assert store.next_item(users[0]).id == store.next_item(users[0]).id


def test_two_annotators_answering_the_same_item_at_once_both_keep_their_answers(tmp_path):
    store = _store(tmp_path, overlap=2)
    store.add_items(_items(1))
    users = []
    for name in ("a1", "a2"):
        store.add_user(name, f"password-{name}")
        users.append(store.login(name, f"password-{name}")[1])
    barrier = threading.Barrier(2)
    errors = []

    def answer(user, better):
        barrier.wait()
        try:
            store.submit(user, 1, "answered", labels(better=better))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=answer, args=(u, i)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted((a["user"], a["labels"]["better"]) for a in store.answers(1)) == [("a1", 0), ("a2", 1)]


# --- the web app over HTTP (in process) ----------------------------------------------------------


@pytest.fixture
def studio(tmp_path):
    from starlette.testclient import TestClient

    from safealign.annotate.app import create_app

    store = _store(tmp_path)
    store.add_user("ann1", "password-ann1")
    store.add_user("ann2", "password-ann2")
    store.add_user("boss", "password-boss", "admin")
    store.add_items(_items(3))
    return store, lambda: TestClient(create_app(store, max_body=4096), follow_redirects=False)


def _login(client, name: str) -> str:
    page = client.get("/login")
    token = page.text.split('name="csrf" value="')[1].split('"')[0]
    response = client.post("/login", content=f"csrf={token}&name={name}&password=password-{name}",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    return page.text.split('data-csrf="')[1].split('"')[0] if 'data-csrf="' in page.text else \
        page.text.split('name="csrf" value="')[1].split('"')[0]


def test_every_page_and_endpoint_needs_a_login(studio):
    store, client = studio
    c = client()
    for path in ("/", "/annotate", "/admin", "/admin/items/1"):
        assert c.get(path).status_code == 303 and c.get(path).headers["location"] == "/login"
    assert c.post("/api/answers", json={"item_id": 1, "labels": labels()}).status_code == 401
    assert c.post("/api/adjudications", json={"item_id": 1, "labels": labels()}).status_code == 401
    bad = c.post("/login", content="csrf=x&name=ann1&password=password-ann1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 401 and "expired" in bad.text  # no login CSRF cookie: refused
    c.get("/login")
    token = c.cookies.get("safealign_login")
    wrong = c.post("/login", content=f"csrf={token}&name=ann1&password=nope", headers={"content-type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    assert store.counts() == {"items": 3, "adjudicated": 0}


def test_refused_posts_store_nothing_and_answers_confirm_after_commit(studio):
    store, client = studio
    c = client()
    csrf = _login(c, "ann1")
    headers = {"x-csrf-token": csrf}
    cases = [
        ({}, {"item_id": 1, "labels": labels()}, 403),  # no CSRF token
        ({"x-csrf-token": "forged"}, {"item_id": 1, "labels": labels()}, 403),
        (headers, {"item_id": 999, "labels": labels()}, 404),  # unknown id
        (headers, {"item_id": "1", "labels": labels()}, 422),  # wrong type
        (headers, {"item_id": 1, "labels": labels(safer=1)}, 422),  # contradiction
        (headers, {"item_id": 1, "labels": labels(), "sneaky": True}, 422),
        (headers, {"item_id": 1, "status": "flagged"}, 422),  # a flag without a comment
        (headers, {"item_id": 1, "labels": labels(), "comment": "x" * 5000}, 413),  # over the 4096-byte body limit
    ]
    for extra, body, status in cases:
        response = c.post("/api/answers", json=body, headers=extra)
        assert response.status_code == status, (body, response.text)
        assert "error" in response.json()
    assert c.post("/api/answers", content=b"{not json", headers={**headers, "content-type": "application/json"}).status_code == 400
    assert c.post("/api/answers", content=b"item_id=1", headers={**headers, "content-type": "text/plain"}).status_code == 415
    assert c.post("/api/answers", json=[1, 2], headers=headers).status_code == 400
    assert store.counts() == {"items": 3, "adjudicated": 0}  # nothing stored
    assert c.get("/admin").status_code == 403  # annotators do not see the admin pages
    assert c.post("/api/adjudications", json={"item_id": 1, "labels": labels()}, headers=headers).status_code == 403
    saved = c.post("/api/answers", json={"item_id": 1, "labels": labels(), "suggestions_shown": True, "seconds": 3.5}, headers=headers)
    assert saved.status_code == 200 and saved.json()["saved"] is True
    assert store.answers(1)[0]["suggestions_shown"] is True  # committed before the 200
    page = c.get("/annotate")
    assert page.status_code == 200 and 'data-item="2"' in page.text and "1 / 3" in page.text
    assert c.get("/static/studio.js").status_code == 200 and c.get("/static/../app.py").status_code == 404


def test_admin_sees_agreement_and_adjudicates(studio):
    store, client = studio
    for name, better in (("ann1", 0), ("ann2", 1)):
        c = client()
        csrf = _login(c, name)
        assert c.post("/api/answers", json={"item_id": 1, "labels": labels(better=better)}, headers={"x-csrf-token": csrf}).status_code == 200
    admin = client()
    csrf = _login(admin, "boss")
    page = admin.get("/admin")
    assert page.status_code == 200 and "Krippendorff" in page.text and 'id="adjudicate-1"' in page.text
    assert "better" in page.text.split('id="adjudicate-1"')[1].split("</tr>")[0]  # the field they differ on
    item = admin.get("/admin/items/1")
    assert item.status_code == 200 and "ann1" in item.text and "ann2" in item.text
    assert admin.get("/admin/items/99").status_code == 404
    assert admin.post("/api/adjudications", json={"item_id": 1, "labels": labels(better=1)}, headers={"x-csrf-token": csrf}).status_code == 200
    assert store.adjudications() == {1: parse_labels(labels(better=1)).to_json()}
    logout = admin.post("/logout", content=f"csrf={csrf}", headers={"content-type": "application/x-www-form-urlencoded"})
    assert logout.status_code == 303 and admin.get("/admin").status_code == 303  # the session is gone


def test_text_is_escaped_in_pages(studio, tmp_path):
    store, client = studio
    store.add_items([{**_items(1)[0], "prompt": "<script>alert(1)</script>", "response_0": "x</script>",
                      "suggestion": {"partial": {"better": 0, "note": "</script><b>"}, "machine": True, "scores": None}}])
    c = client()
    _login(c, "ann1")
    for _ in range(3):  # answer the three plain items first
        page = c.get("/annotate")
        item_id = int(page.text.split('data-item="')[1].split('"')[0])
        if "alert(1)" in page.text:
            break
        csrf = page.text.split('data-csrf="')[1].split('"')[0]
        c.post("/api/answers", json={"item_id": item_id, "status": "skipped"}, headers={"x-csrf-token": csrf})
    page = c.get("/annotate")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert "</script><b>" not in page.text  # the suggestion's JSON cannot close its script element


# --- import and export ---------------------------------------------------------------------------


def test_import_v1_and_an_audit_then_export_passes_validate(tmp_path):
    from safealign.annotate.exchange import audited_records, export_rows, import_records, write_export
    from safealign.data.load import load

    store = _store(tmp_path, overlap=1)
    loaded = load([str(V1)])
    report = import_records(store, loaded.records[:5] + [_qa()])
    assert (report.read, report.added, report.already_there, len(report.rejected)) == (6, 5, 0, 1)
    item = store.items()[0]
    assert item.suggestion["labels"] is not None and item.suggestion["machine"] is False  # the source's own labels
    # an audit flagged lines 7 and 9 of the v1 file
    audit = write_jsonl(tmp_path / "label_issues.jsonl", [
        {"source": str(V1), "line": line, "field": "is_response_0_safe", "label_set": "is_safe", "slot": 0, "given": True,
         "suggested": False, "confidence": 0.9, "score": 0.1, "is_issue": flagged} for line, flagged in ((7, True), (8, False), (9, True))])
    records, notes, flagged = audited_records(audit)
    assert flagged == 2 and sorted(r.origin for r in records) == [f"{V1}:7", f"{V1}:9"]
    report = import_records(store, records, notes)
    assert report.added == 2 and "audit: is_response_0_safe given True, suggested False" in store.items()[-1].note
    admin_id = store.add_user("boss", "password-boss", "admin")
    assert admin_id
    user = store.login("boss", "password-boss")[1]
    for item in store.items()[:3]:
        store.submit(user, item.id, "answered", labels())
    store.submit(user, store.items()[3].id, "skipped")
    rows, report = export_rows(store)
    assert (report.items, report.exported, report.unanswered, report.unresolved) == (7, 3, 4, [])
    assert rows[0]["meta"]["labels_from"] == "single" and rows[0]["meta"]["annotators"][0]["user"] == "boss"
    out = tmp_path / "export.jsonl"
    write_export(store, out)
    proc = run_cli("data", "validate", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3" in proc.stdout and "pku-saferlhf-v1" in proc.stdout


def _qa():
    from safealign.data.records import QARecord

    return QARecord(prompt="p", response="r", is_safe=True, origin="qa:1")


def test_annotate_cli_users_import_export(tmp_path):
    db = str(tmp_path / "cli.db")
    env_password = {"SAFEALIGN_PASSWORD": "password-one"}
    os.environ.update(env_password)
    try:
        added = run_cli("annotate", "users", "add", "one", "--role", "admin", "--db", db)
        again = run_cli("annotate", "users", "add", "one", "--db", db)
    finally:
        os.environ.pop("SAFEALIGN_PASSWORD")
    assert added.returncode == 0 and "added admin one" in added.stdout
    assert again.returncode == 1 and "exists already" in again.stderr
    imported = run_cli("annotate", "import", str(V1), "--db", db)
    assert imported.returncode == 0 and "added 100 | already there 0 | not pairs 0" in imported.stdout
    twice = run_cli("annotate", "import", str(V1), "--db", db)
    assert "added 0 | already there 100" in twice.stdout
    exported = run_cli("annotate", "export", "--to", str(tmp_path / "out.jsonl"), "--db", db)
    assert exported.returncode == 0 and "exported 0 (0 adjudicated) | unanswered 100" in exported.stdout
    bad = run_cli("annotate", "export", "--to", str(tmp_path / "x.jsonl"), "--db", "nosuchdriver://x")
    assert bad.returncode == 1 and "--db nosuchdriver://x" in bad.stderr


def _serve(db: str, overlap: int = 2) -> tuple[subprocess.Popen, str]:
    """`safealign annotate serve` in a subprocess on a free port, once it answers /healthz."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from safealign.cli import main; main()", "annotate", "serve", "--db", db,
                             "--port", str(port), "--overlap", str(overlap)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stdout.read().decode())


def test_a_killed_server_keeps_every_confirmed_answer(tmp_path):
    db = f"sqlite:///{tmp_path / 'kill.db'}"
    store = Store(db, overlap=1)
    store.add_user("ann1", "password-ann1")
    store.add_items(_items(300))
    store.engine.dispose()

    proc, url = _serve(db, overlap=1)
    confirmed = []
    with httpx.Client(base_url=url, follow_redirects=False) as c:
        token = c.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
        c.post("/login", data={"csrf": token, "name": "ann1", "password": "password-ann1"})
        csrf = c.get("/annotate").text.split('data-csrf="')[1].split('"')[0]
        killer = threading.Timer(0.8, lambda: os.kill(proc.pid, signal.SIGKILL))
        killer.start()
        for item_id in range(1, 301):
            try:
                r = c.post("/api/answers", json={"item_id": item_id, "labels": labels()}, headers={"x-csrf-token": csrf})
            except httpx.HTTPError:
                break  # the server died mid-session
            if r.status_code == 200:
                confirmed.append(item_id)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and 0 < len(confirmed) < 300  # killed mid-session
    proc, url = _serve(db, overlap=1)  # restart on the same database
    try:
        stored = {a["item_id"] for a in Store(db, overlap=1).answers()}
        assert set(confirmed) <= stored
    finally:
        proc.kill()
        proc.wait()


# --- as a person uses it: a real headless Chromium --------------------------------------------


def _chrome(scratch: Path):
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
                 f"--user-data-dir={scratch / 'profile'}"):
        options.add_argument(flag)
    # the browser's profile, crash reports and GTK caches go to the test's folder, never the user's HOME
    env = {**os.environ, "HOME": str(scratch), "XDG_CONFIG_HOME": str(scratch / "config"), "XDG_CACHE_HOME": str(scratch / "cache")}
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver"), env=env))


def test_two_annotators_and_an_admin_in_a_real_browser(tmp_path):
    from safealign.annotate.exchange import import_records
    from safealign.data.load import load
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    db = f"sqlite:///{tmp_path / 'browser.db'}"
    store = Store(db, overlap=2)
    for name, role in (("ann1", "annotator"), ("ann2", "annotator"), ("boss", "admin")):
        store.add_user(name, f"password-{name}", role)
    import_records(store, load([str(V1)]).records[:3])
    store.engine.dispose()
    shots = Path(os.environ.get("SAFEALIGN_SCREENSHOTS", tmp_path))
    proc, url = _serve(db)
    driver = _chrome(tmp_path / "browser")
    wait = WebDriverWait(driver, 15)

    def login(name: str) -> None:
        driver.delete_all_cookies()
        driver.get(url + "/login")
        driver.find_element(By.ID, "name").send_keys(name)
        driver.find_element(By.ID, "password").send_keys(f"password-{name}" + Keys.ENTER)
        wait.until(lambda d: "/login" not in d.current_url)

    def keys(text: str) -> None:
        driver.find_element(By.TAG_NAME, "body").send_keys(text)

    try:
        for name, better in (("ann1", "z"), ("ann2", "x")):
            login(name)
            for n in range(3):
                wait.until(lambda d: d.find_elements(By.ID, "studio"))
                item = driver.find_element(By.ID, "studio").get_attribute("data-item")
                # response A safe (severity 0); response B: Violence (key y), severity 2; better by name; safer A
                keys("[0]y2" + better + "c")
                if name == "ann1" and n == 0:
                    keys(".")  # show the machine suggestions, for the screenshot
                    driver.save_screenshot(str(shots / "studio-annotate.png"))
                keys(Keys.ENTER)
                wait.until(lambda d: not d.find_elements(By.ID, "studio") or d.find_element(By.ID, "studio").get_attribute("data-item") != item)
            assert "Queue empty" in driver.page_source
        login("boss")
        driver.get(url + "/admin")
        assert "Krippendorff" in driver.page_source
        rows = driver.find_elements(By.CSS_SELECTOR, "table.disagreements tr")
        assert len(rows) == 4  # header + the three items: the annotators differ on "better" in each
        driver.save_screenshot(str(shots / "studio-admin.png"))
        driver.find_element(By.ID, "adjudicate-1").click()
        wait.until(lambda d: "Adjudicate item 1" in d.page_source)
        keys("[0]y2zc" + Keys.ENTER)
        wait.until(lambda d: d.current_url.endswith("/admin"))
        assert "adjudicated" in driver.find_element(By.ID, "adjudicate-1").find_element(By.XPATH, "../..").text
        # a contradiction is refused in the page before it reaches the server
        driver.get(url + "/admin/items/2")
        keys("[0]y0zc" + Keys.ENTER)  # Violence with severity 0 on response B
        wait.until(lambda d: d.find_element(By.ID, "status").text)
        assert "severity 0" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
        proc.kill()
        proc.wait()
    for shot in ("studio-annotate.png", "studio-admin.png"):
        assert (shots / shot).stat().st_size > 20_000  # a rendered page, not a blank one
    store = Store(db, overlap=2)
    assert len(store.answers()) == 6 and list(store.adjudications()) == [1]
    out = tmp_path / "export.jsonl"
    proc = run_cli("annotate", "export", "--to", str(out), "--db", db)
    assert "exported 1 (1 adjudicated)" in proc.stdout and "unresolved 2" in proc.stdout  # ties wait for adjudication
    assert run_cli("data", "validate", str(out)).returncode == 0


# --- PostgreSQL: a real server, started here ------------------------------------------------------


@pytest.fixture
def postgres_url():
    import glob
    import shutil
    import tempfile

    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("needs PostgreSQL's server binaries (Debian's postgresql; .ci/run installs it)")
    bin_dir = Path(initdb).parent
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="safealign-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a postgres user to start the server as")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_port()
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_studio_on_a_real_postgresql_server(postgres_url, tmp_path):
    store = Store(postgres_url, overlap=2)
    store.add_user("ann1", "password-ann1")
    store.add_user("ann2", "password-ann2")
    store.add_user("boss", "password-boss", "admin")
    imported = run_cli("annotate", "import", str(V1), "--db", postgres_url)
    assert imported.returncode == 0 and "added 100" in imported.stdout, imported.stderr
    users = [store.login(n, f"password-{n}")[1] for n in ("ann1", "ann2")]
    barrier = threading.Barrier(2)

    def answer(user, better):
        barrier.wait()
        store.submit(user, 1, "answered", labels(better=better))

    threads = [threading.Thread(target=answer, args=(u, i)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a["user"] for a in store.answers(1)) == ["ann1", "ann2"]
    with pytest.raises(StoreError, match="has its 2 answer"):
        store.submit(store.login("boss", "password-boss")[1], 1, "answered", labels())
    store.adjudicate(store.login("boss", "password-boss")[1], 1, labels())
    out = tmp_path / "pg.jsonl"
    exported = run_cli("annotate", "export", "--to", str(out), "--db", postgres_url)
    assert "exported 1 (1 adjudicated) | unanswered 99" in exported.stdout, exported.stdout + exported.stderr
    assert run_cli("data", "validate", str(out)).returncode == 0


# --- build pairs ---------------------------------------------------------------------------------


def test_machine_labels_are_consistent_by_hand():
    from safealign.annotate.build import machine_labels
    from safealign.moderation.model import Verdict

    def verdict(flagged, p, severity, categories=()):
        scores = {"Violence": 0.4, "Drugs": 0.3}
        return Verdict(flagged, p, {c: c in categories for c in scores}, scores, severity, [0.25] * 4)

    # response 0 flagged with no category over threshold -> its most likely category, severity raised to 1
    out = machine_labels([verdict(True, 0.9, 0), verdict(False, 0.1, 0)], [1.0, 2.5], [0.5, 3.0])
    assert out["responses"] == [{"categories": ["Violence"], "severity": 1}, {"categories": [], "severity": 0}]
    assert out["better"] == 1 and out["better_margin"] == pytest.approx(1.5)
    assert out["safer"] == 1 and out["safer_rule"] == "safety labels"  # the cost model said 0; the safe one wins
    both_unsafe = machine_labels([verdict(True, 0.9, 2, ("Drugs",)), verdict(True, 0.6, 3, ("Violence",))], [0, 0], None)
    assert both_unsafe["safer"] == 1 and both_unsafe["safer_rule"] == "moderator" and both_unsafe["safer_margin"] == pytest.approx(0.3)


def test_build_pairs_cli_writes_valid_v1_and_resumes(tmp_path):
    from tiny import tiny_bert, tiny_llama

    from safealign.config import build_config
    from safealign.models.score import ScoreModel, load_score_tokenizer
    from safealign.moderation.train import ModerationConfig, train_moderator

    policy = tiny_llama(tmp_path / "policy")
    train_moderator(build_config(ModerationConfig, None, [
        "--model", str(tiny_bert(tmp_path / "encoder")), "--data", str(V1), "--output_dir", str(tmp_path / "mod"),
        "--max_steps", "2", "--num_threads", "1", "--save_every", "0", "--eval_every", "0"]))
    ScoreModel.from_base(policy, kind="reward").save_pretrained(tmp_path / "reward", load_score_tokenizer(policy))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "response": ""} for p in
                                                       ("How do I bake bread?", "Name a river.", "Spell cat.", "Name a river.")])
    out = tmp_path / "pairs.jsonl"
    args = ("build", "pairs", "--policy", str(policy), "--prompts", str(prompts), "--moderator", str(tmp_path / "mod/model"),
            "--reward", str(tmp_path / "reward"), "--out", str(out), "--max_new_tokens", "6", "--batch_size", "2", "--threads", "1")
    first = run_cli(*args, "--limit", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 prompt(s): wrote 2 pair(s), 0 already" in first.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["meta"]["machine"] is True and r["response_0_source"] == str(policy) for r in rows)
    assert rows[0]["meta"]["labels"]["better"]["model"] == str(tmp_path / "reward")
    with open(out, "a") as f:
        f.write('{"prompt": "torn')  # a run killed mid-line
    again = run_cli(*args, "--per_prompt", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 prompt(s): wrote 4 pair(s), 2 already" in again.stdout  # the duplicate prompt counts once
    valid = run_cli("data", "validate", str(out))
    assert valid.returncode == 0 and "6" in valid.stdout, valid.stdout + valid.stderr
    bad = run_cli("build", "pairs", "--policy", str(policy), "--prompts", str(prompts), "--moderator", str(tmp_path / "mod/model"),
                  "--reward", str(tmp_path / "reward"), "--out", str(out), "--temperature", "0")
    assert bad.returncode == 1 and "greedy" in bad.stderr
