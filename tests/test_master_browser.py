"""The console in headless Chromium (Debian's `chromium`, driven by Playwright) against a real
stack from `hivemind up`: node pool, master and a worker process."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

#: A bundle that writes its log slowly, so the page can be seen updating while it runs.
SLOW_BUNDLE = """\
import time
from pathlib import Path
from hivemind.task import report_progress

for i in range(8):
    print(f"step {i} of 8", flush=True)
    report_progress((i + 1) / 8, f"step {i}")
    time.sleep(0.6)
Path("output").mkdir(exist_ok=True)
Path("output/answer.txt").write_text("42\\n")
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with started_cluster(redis_server, tmp_path_factory.mktemp("browser"), workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def base_url(cluster: Cluster) -> str:
    return f"http://127.0.0.1:{cluster.env['HIVEMIND_MASTER_PORT']}"


@pytest.fixture(scope="module")
def admin_password(cluster: Cluster) -> str:
    return (cluster.home / "node_pool" / "admin.password").read_text().strip()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        # A test that claims the console works in a browser is never skipped quietly.
        pytest.fail(
            "Debian's chromium is not installed: apt-get install -y chromium", pytrace=False
        )
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        found = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield found
        found.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    found = context.new_page()
    found.set_default_timeout(30_000)
    yield found
    context.close()


def sign_in(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/")
    expect(page).to_have_url(f"{base_url}/login?next=%2F")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Dashboard")


def test_submit_a_bundle_watch_it_live_and_download_the_result(
    page: Page, base_url: str, admin_password: str, tmp_path: Path
) -> None:
    sign_in(page, base_url, "admin", admin_password)
    bundle = tmp_path / "slow.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("main.py", SLOW_BUNDLE)
    page.click("text=Submit")
    page.set_input_files("input[name=bundle]", str(bundle))
    page.fill("input[name=name]", "slow-counter")
    page.fill("input[name=timeout]", "120")
    page.click("form.submit button[type=submit]")
    expect(page.locator("h1")).to_contain_text("slow-counter")
    # Mark this page load: the log must grow under it, without a reload.
    page.evaluate("window.sameLoad = true")
    expect(page.locator("#log")).to_contain_text("step 2 of 8", timeout=60_000)
    assert page.evaluate("window.sameLoad === true")
    assert page.locator("#task-status").inner_text() == "RUNNING"
    assert 0 < float(page.locator("#task-progress").get_attribute("value") or 0) < 1
    # Once it ends, the page shows the final state and offers the result.
    expect(page.locator("#task-status")).to_have_text("SUCCEEDED", timeout=60_000)
    expect(page.locator("#log")).to_contain_text("done")
    expect(page.locator(".history")).to_contain_text("succeeded")
    with page.expect_download() as info:
        page.click("#result-download")
    archive = info.value.path()
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("answer.txt").decode().strip() == "42"


def test_a_normal_user_gets_403_for_admin_pages_and_others_tasks(
    browser: Browser, base_url: str, admin_password: str
) -> None:
    admin = httpx2.Client(base_url=base_url, timeout=30)
    token = admin.post(
        "/api/auth/login", json={"username": "admin", "password": admin_password}
    ).json()["token"]
    admin.headers["authorization"] = f"Bearer {token}"
    admin.post("/api/users", json={"username": "bob", "password": "bob-password"})
    task_id = admin.post(
        "/api/tasks",
        data={"function": "hivemind.examples:add", "args": "[1, 2]", "name": "admins-own"},
    ).json()["task_id"]
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, base_url, "bob", "bob-password")
        assert page.locator("nav a", has_text="Users").count() == 0
        for path in ("/users", "/doctor", f"/tasks/{task_id}"):
            response = page.goto(f"{base_url}{path}")
            assert response is not None and response.status == 403, path
            expect(page.locator("h1")).to_have_text("Error 403")
            assert "admins-own" not in page.content()
    finally:
        context.close()


def test_the_dashboard_lists_the_worker_and_ticks_its_heartbeat(
    page: Page, base_url: str, admin_password: str
) -> None:
    sign_in(page, base_url, "admin", admin_password)
    row = page.locator("table.workers tbody tr").first
    expect(row).to_contain_text("online")
    age = row.locator(".age")
    first = age.inner_text()
    expect(age).not_to_have_text(first, timeout=5_000)  # the script keeps it current
    assert page.locator("svg.chart").count() == 1


def test_without_javascript_the_basics_still_work(
    browser: Browser, base_url: str, admin_password: str
) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, base_url, "admin", admin_password)
        page.click("text=Submit")
        page.fill("input[name=function]", "hivemind.examples:add")
        page.fill("input[name=args]", "[20, 22]")
        page.click("form.submit button[type=submit]")
        expect(page.locator("#task-status")).to_be_visible()
        for _ in range(60):
            page.reload()
            if page.locator("#task-status").inner_text() == "SUCCEEDED":
                break
            page.wait_for_timeout(500)
        expect(page.locator("#task-status")).to_have_text("SUCCEEDED")
        expect(page.locator("dd code").last).to_have_text("42")
    finally:
        context.close()
