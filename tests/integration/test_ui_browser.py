"""The operator console in a real browser, on the real stack, as the least-privilege operator.

One dead letter carries hostile strings (script tags in its payload and in the provisioner's
skip reason). The operator finds it, opens it, is refused a retry without the token, signs in,
retries it from the dead-letter list, and watches it end applied, with the audit row written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from console import Client, Console, chromium, screenshot
from harness import Pipeline
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_security_roles import PASSWORDS, url_for

from pipeline.devtools.fake_provisioner import FakeProvisioner
from pipeline.devtools.fake_provisioner.rules import Rule
from pipeline.store.outbox import enqueue
from pipeline.store.roles import create_roles

pytestmark = pytest.mark.integration

TOKEN = "console-token-0123456789abcdef"
# Each would set window.__xss if the browser ever ran it.
HOSTILE_TIER = "<script>window.__xss = 'payload'</script>"
HOSTILE_REASON = "<img src=x onerror=\"window.__xss='reason'\"><script>window.__xss='skip'</script>"
XSS_FIRED = "return window.__xss === undefined ? null : String(window.__xss)"


@dataclass
class Stack:
    p: Pipeline
    provisioner: FakeProvisioner
    applied: list[int]
    hostile: int
    other: int  # a second dead letter


@pytest.fixture
def stack(make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner) -> Stack:
    p = make_pipeline(max_attempts=2)
    create_roles(p.database_url, {"pipeline_operator": PASSWORDS["pipeline_operator"]})
    provisioner.set_rules([Rule(match="xss-*", action="skip", reason=HOSTILE_REASON)])
    with psycopg.connect(p.database_url) as conn:
        ok = [
            enqueue(
                conn, "tier_elevation", "team-ui", "postgres", f"db-{i}", {"target_tier": "pro"}
            )
            for i in range(4)
        ]
        ok.append(enqueue(conn, "resource_suspend", "team-ui", "redis", "cache-1", {}))
        hostile = enqueue(
            conn,
            "tier_elevation",
            "team-<b>x</b>",
            "postgres",
            "xss-1",
            {"target_tier": HOSTILE_TIER},
        )
        # A second dead letter, so the list's "select all" retries more than one.
        other = enqueue(
            conn, "tier_demotion", "team-ui", "postgres", "xss-2", {"target_tier": "dev"}
        )
    p.start()
    rows = p.wait_terminal([*ok, hostile, other])
    assert rows[hostile]["failed_at"] is not None and rows[other]["failed_at"] is not None
    assert all(rows[i]["applied_at"] is not None for i in ok)
    return Stack(p, provisioner, ok, hostile, other)


def _console_env(p: Pipeline, token: str | None) -> dict[str, str]:
    env = p.env()
    # The least-privilege operator role: every page and the retry must work with its grants.
    env["PIPELINE_DATABASE_URL"] = url_for(p.database_url, "pipeline_operator")
    if token:
        env["PIPELINE_UI_TOKEN"] = token
    return env


def _db_counts(url: str) -> dict[str, int]:
    # An independent witness: terminal stamps only (every row in this test is terminal).
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE applied_at IS NOT NULL),"
            " count(*) FILTER (WHERE failed_at IS NOT NULL), count(*) FROM pending_propagations"
        ).fetchone()
    assert row is not None
    return {"applied": row[0], "dead_lettered": row[1], "all": row[2]}


def _text(driver: Any, css: str) -> str:
    # Waits: after a click the next page may still be loading (a loaded CI machine saw the
    # refusal page's title looked up before it arrived).
    return str(_wait(driver, css).text)


def _wait(driver: Any, css: str, timeout: float = 60) -> Any:
    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _navigates(driver: Any, act: Callable[[], Any], timeout: float = 60) -> None:
    # Runs an action that loads a new page and waits until the old document is gone. Without
    # this, a wait for an element both pages share returns the old page's copy: CI saw the
    # filter's result counted while the unfiltered list was still on screen. The old page is
    # marked in its window; the new document has no mark. (Checking the old <html> element
    # for staleness made Chrome fail with "Node ... does not belong to the document" when the
    # check landed mid-navigation.)
    driver.execute_script("window.__oldPage = true")
    act()

    def new_page(d: Any) -> bool:
        try:
            return bool(d.execute_script("return window.__oldPage === undefined"))
        except WebDriverException:  # between documents: ask again
            return False

    WebDriverWait(driver, timeout).until(new_page)


def _no_secrets(html: str) -> None:
    # Neither the token nor the database's password, URL or login user ever reach a page.
    for secret in (TOKEN, PASSWORDS["pipeline_operator"], "postgresql://", "_operator_user"):
        assert secret not in html


def _no_console_errors(driver: Any) -> None:
    _no_secrets(driver.page_source)
    # CSP violations and script errors show up as SEVERE entries of the browser log.
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_console_finds_retries_and_escapes(stack: Stack) -> None:
    p, hostile = stack.p, stack.hostile
    console = Console(_console_env(p, TOKEN), p.logdir)
    try:
        with chromium() as driver:
            _overview_matches_database(driver, console, p)
            _hostile_strings_stay_inert(driver, console, hostile)
            _refused_without_token(driver, console, p, hostile)
            _retry_as_operator(driver, console, stack)
            _replays_show_the_lock_holder(driver, console)
    finally:
        console.stop()
    assert "Traceback" not in console.log()


def _overview_matches_database(driver: Any, console: Console, p: Pipeline) -> None:
    driver.get(console.url + "/")
    _wait(driver, "#chart[data-drawn='1']")
    _wait(driver, "#lag tbody tr")  # the first lag measurement arrived
    db = _db_counts(p.database_url)
    assert _text(driver, "#total-applied") == str(db["applied"]) == "5"
    assert _text(driver, "#total-dead_lettered") == str(db["dead_lettered"]) == "2"
    for state in ("pending", "in_flight", "retrying"):
        assert _text(driver, f"#total-{state}") == "0"
    assert _text(driver, "#dead-last-hour") == "2"
    cell = "#counts td[data-kind='tier_elevation'][data-state='applied']"
    assert _text(driver, cell) == "4"
    assert _text(driver, "#hour-dead_lettered") == "2"
    # Lag: one row per partition of each consumer (3 partitions, 2 consumers) + 2 totals.
    assert len(driver.find_elements(By.CSS_SELECTOR, "#lag tbody tr")) == 3 * 2 + 2
    # The page refreshes itself: wait for one refresh, then the counts are still right.
    _wait(driver, "#live[data-refreshed]", timeout=30)
    assert _text(driver, "#total-applied") == "5"
    screenshot(driver, "overview")
    _no_console_errors(driver)


def _hostile_strings_stay_inert(driver: Any, console: Console, hostile: int) -> None:
    # The witness works: the same strings, unescaped, do run in this browser.
    driver.get("data:text/html,<body>" + HOSTILE_REASON.replace("#", "%23") + "</body>")
    assert driver.execute_script(XSS_FIRED) is not None

    driver.get(console.url + "/dead-letters")
    row = _wait(driver, f"#dead-letters tr[data-id='{hostile}']")
    assert HOSTILE_REASON in row.text  # shown as text, not parsed as markup
    assert "team-<b>x</b>" in row.text
    assert driver.execute_script(XSS_FIRED) is None
    screenshot(driver, "dead-letters")

    # Found by its resource id from the header's search, then opened.
    box = driver.find_element(By.CSS_SELECTOR, "header input[name=q]")
    _navigates(driver, lambda: box.send_keys("xss-1\n"))
    link = _wait(driver, "#results").find_element(By.LINK_TEXT, str(hostile))
    _navigates(driver, link.click)
    _wait(driver, "#events")
    assert _text(driver, "#state") == "dead_lettered"
    assert HOSTILE_TIER in _text(driver, "#payload")
    assert HOSTILE_REASON in _text(driver, "#skip-reason")
    events = _text(driver, "#events")
    assert "dead_lettered" in events and "unexpected_skip" in events
    assert driver.execute_script(XSS_FIRED) is None
    assert driver.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    screenshot(driver, "propagation-dead-lettered")
    _no_console_errors(driver)


def _refused_without_token(driver: Any, console: Console, p: Pipeline, hostile: int) -> None:
    driver.get(f"{console.url}/propagations/{hostile}")
    driver.find_element(By.ID, "retry-operator").send_keys("mallory")
    driver.find_element(By.ID, "retry-reason").send_keys("no token")
    _navigates(driver, driver.find_element(By.ID, "retry-submit").click)
    assert _text(driver, "#problem-title") == "Token required"
    screenshot(driver, "retry-refused")
    logged = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert [m.split(" - ")[0] for m in logged] == [f"{console.url}/retry"]  # the 403 itself
    # A forged post (no CSRF token, foreign origin) is refused before anything else.
    client = Client(console.url)
    status, _body, _h = client.post("/retry", [("id", str(hostile)), ("operator", "x")])
    assert status == 403
    csrf = client.csrf()
    status, body, _h = client.post(
        "/login", [("csrf", csrf), ("token", TOKEN)], {"Origin": "http://evil.example"}
    )
    assert (status, "CSRF" in body) == (403, True)
    with psycopg.connect(p.database_url) as conn:
        actions = conn.execute("SELECT count(*) FROM propagation_operator_actions").fetchone()
        failed = conn.execute(
            "SELECT failed_at IS NOT NULL FROM pending_propagations WHERE id = %s", (hostile,)
        ).fetchone()
    assert (actions, failed) == ((0,), (True,))


def _retry_as_operator(driver: Any, console: Console, stack: Stack) -> None:
    p, hostile, other = stack.p, stack.hostile, stack.other
    driver.get(console.url + "/dead-letters")
    login = driver.find_element(By.ID, "login")
    _navigates(driver, lambda: login.find_element(By.NAME, "token").send_keys(TOKEN + "\n"))
    assert _wait(driver, "#mode").text == "operator"
    # The filter narrows the list: by kind, only the second dead letter is left.
    Select(driver.find_element(By.NAME, "kind")).select_by_value("tier_demotion")
    _navigates(driver, driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click)
    _wait(driver, f"#dead-letters tr[data-id='{other}']")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")) == 1
    # By reason and skip bucket (the audit-driven query): both, as the pipeline recorded them.
    driver.get(console.url + "/dead-letters?reason=max_attempts&bucket=other")
    rows = driver.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr[data-id]")
    assert sorted(int(r.get_attribute("data-id")) for r in rows) == sorted((hostile, other))
    driver.get(console.url + "/dead-letters?reason=unknown_kind")
    assert "no dead letters match" in _text(driver, "#dead-letters")
    _navigates(driver, driver.find_element(By.LINK_TEXT, "clear").click)
    _wait(driver, f"#dead-letters tr[data-id='{hostile}']")
    stack.provisioner.set_rules([])  # the cause is fixed; now the retries can succeed
    driver.find_element(By.ID, "select-all").click()  # both dead letters
    driver.find_element(By.ID, "retry-operator").send_keys("alice")
    driver.find_element(By.ID, "retry-reason").send_keys("skip rule removed")
    _navigates(driver, driver.find_element(By.ID, "retry-submit").click)
    _wait(driver, "#retry-results tbody tr")
    results = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#retry-results tbody tr")]
    assert results == [
        f"{i} retried attempt 3 due now, fresh attempt budget (audit #{n})"
        for n, i in enumerate(sorted((hostile, other)), 1)
    ]
    with psycopg.connect(p.database_url) as conn:
        actions = conn.execute(
            "SELECT propagation_id, action, reason, actor FROM propagation_operator_actions"
            " ORDER BY id"
        ).fetchall()
    assert actions == [
        (i, "retry_dead_lettered", "skip rule removed", "alice") for i in sorted((hostile, other))
    ]
    rows = p.wait_terminal([hostile, other])
    for i in (hostile, other):
        assert (rows[i]["applied_at"] is not None, rows[i]["attempts"]) == (True, 3)
        assert rows[i]["attempt_budget_base"] == 2  # the budget restarted at the retry
    driver.get(f"{console.url}/propagations/{hostile}")
    assert _wait(driver, "#state").text == "applied"
    assert "alice" in _text(driver, "#actions") and "skip rule removed" in _text(driver, "#actions")
    screenshot(driver, "propagation-applied")
    _no_console_errors(driver)


def _replays_show_the_lock_holder(driver: Any, console: Console) -> None:
    driver.get(console.url + "/replays")
    # The live projector holds the projection lock while it runs.
    assert _wait(driver, "#lock").text.startswith("held by pid ")
    assert "no incremental replay position is saved" in _text(driver, "#replay-cursor")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#projector tbody tr")) == 3
    screenshot(driver, "replays")
    _no_console_errors(driver)


def test_read_only_console_refuses_actions(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()  # migrated; no component needed to be refused
    create_roles(p.database_url, {"pipeline_operator": PASSWORDS["pipeline_operator"]})
    with psycopg.connect(p.database_url) as conn:
        hostile = enqueue(conn, "tier_elevation", "t", "postgres", "db-1", {"target_tier": "pro"})
    console = Console(_console_env(p, None), p.logdir, "ui-read-only")
    try:
        client = Client(console.url)
        status, html, _headers = client.get(f"/propagations/{hostile}")
        assert status == 200
        assert "read-only (PIPELINE_UI_TOKEN not set)" in html
        assert 'id="retry-submit"' not in html
        csrf = client.csrf()
        fields = [("csrf", csrf), ("id", str(hostile)), ("operator", "a"), ("reason", "b")]
        status, html, _h = client.post("/retry", fields)
        assert (status, "Read-only console" in html) == (403, True)
        status, _html, _h = client.post("/login", [("csrf", csrf), ("token", "anything")])
        assert status == 403
    finally:
        console.stop()


def test_console_without_its_database_hides_the_connection_details(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline()
    env = p.env()
    wrong = "pw-wrong-" + PASSWORDS["pipeline_operator"]
    env["PIPELINE_DATABASE_URL"] = url_for(p.database_url, "pipeline_operator").replace(
        PASSWORDS["pipeline_operator"], wrong
    )
    console = Console(env, p.logdir, "ui-no-db")  # it starts without its database
    try:
        for path in ("/", "/dead-letters", "/propagations/1", "/propagations?q=team"):
            status, html, headers = Client(console.url).get(path)
            assert (status, "Data unavailable" in html) == (503, True), path
            assert wrong not in html and "postgresql://" not in html and "127.0.0.1" not in html
            assert headers["x-content-type-options"] == "nosniff"
    finally:
        console.stop()


def test_console_without_kafka_still_tells_the_postgres_story(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    from pipeline.devtools.stack.procs import free_port

    p = make_pipeline()
    with psycopg.connect(p.database_url) as conn:
        pid = enqueue(conn, "tier_elevation", "t", "postgres", "db-1", {"target_tier": "pro"})
    env = {**p.env(), "PIPELINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}  # nobody there
    console = Console(env, p.logdir, "ui-no-kafka")
    try:
        client = Client(console.url)
        status, html, _h = client.get(f"/propagations/{pid}")
        assert status == 200 and 'id="log-error"' in html
        assert '<span class="badge state-open" id="state">open</span>' in html
        status, html, _h = client.get("/")
        assert status == 200 and 'id="total-pending">1<' in html
        assert "not measured yet" in html
    finally:
        console.stop()
