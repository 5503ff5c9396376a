"""The browser page in a real Chromium against the real app.

The store is built with the same commands a deployment uses (`movierec db upgrade`,
`data import`, `train`), the app is started with `movierec serve`, and Playwright drives Debian's
Chromium (never a downloaded browser). Without Chromium the tests are skipped locally and fail in
CI (`CI` set).

Screenshots of the main views go to pytest's temporary folder, to `artifacts/screenshots/` in CI,
and to `docs/screenshots/` when `MOVIEREC_SCREENSHOTS=1`. `MOVIEREC_E2E_MOVIELENS=DIR` imports a
MovieLens release instead of the tiny catalogue (for the documentation's screenshots).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from bench.ports import free_port
from tests.deploy.tiny_catalogue import write_catalogue

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_TOKEN = "e2e-admin-token-0123456789"
DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)


def chromium_path() -> str:
    """Debian's Chromium, or skip (locally) / fail (in CI) with the reason."""
    path = os.environ.get("MOVIEREC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if Path(path).is_file():
        return path
    reason = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def run(argv: list[str], environ: dict[str, str]) -> None:
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"`{' '.join(argv)}` failed:\n{done.stdout}{done.stderr}"


@dataclass(frozen=True)
class Server:
    url: str
    environ: dict[str, str]  # the configuration it runs with (for a worker beside it)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited:\n{log.read_text()}")
        try:
            if get_json(f"{url}/readyz")["status"] == "ready":
                return
        except (OSError, urllib.error.HTTPError, KeyError):
            pass
        time.sleep(0.3)
    process.terminate()
    process.wait(timeout=20)
    pytest.fail(f"the server never became ready:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A SQLite store with a catalogue and a trained model, served by `movierec serve`."""
    chromium_path()  # skip before the expensive part when there is no browser
    folder = tmp_path_factory.mktemp("page")
    environ = dict(os.environ)
    environ.update(
        MOVIEREC_ENVIRONMENT="test",
        MOVIEREC_DATABASE_URL=f"sqlite:///{folder / 'movierec.db'}",
        MOVIEREC_MODEL_DIR=str(folder / "models"),
        MOVIEREC_DATA_DIR=str(folder / "data"),
        MOVIEREC_ADMIN_TOKEN=ADMIN_TOKEN,
        MOVIEREC_LOG_LEVEL="WARNING",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}",
    )
    run(["movierec", "db", "upgrade"], environ)
    movielens = os.environ.get("MOVIEREC_E2E_MOVIELENS")
    if movielens:
        run(["movierec", "data", "import", "--no-progress", movielens], environ)
        epochs = os.environ.get("MOVIEREC_E2E_EPOCHS", "10")
    else:
        files = write_catalogue(folder / "catalogue")
        run(
            ["movierec", "data", "import", "--no-progress", "--ratings", str(files.ratings),
             "--movies", str(files.movies)],
            environ,
        )  # fmt: skip
        epochs = "2"
    run(["movierec", "train", "--if-no-model", "--epochs", epochs], environ)
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["movierec", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"],
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield Server(url, environ)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh browser tab (empty storage) on the app; fails the test on any script error."""
    context = browser.new_context(viewport=DESKTOP, base_url=server.url)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    outside: list[str] = []
    tab.on(
        "request",
        lambda r: (
            None if r.url.startswith((server.url, "data:", "blob:")) else outside.append(r.url)
        ),
    )
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"
    assert not outside, f"the page fetched from outside the app: {outside}"


def screenshot(tab: Page, name: str, tmp_path: Path, *, full_page: bool = False) -> None:
    """Save a screenshot of the view: always to tmp_path, to artifacts/ in CI, to docs/ on ask."""
    tab.mouse.move(0, 0)  # no hover effect in the picture
    tab.wait_for_timeout(300)  # let the last list settle
    targets = [tmp_path / f"{name}.png"]
    if os.environ.get("CI"):
        targets.append(ROOT / "artifacts" / "screenshots" / f"{name}.png")
    if os.environ.get("MOVIEREC_SCREENSHOTS") == "1":
        targets.append(ROOT / "docs" / "screenshots" / f"{name}.png")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(target), type="png", full_page=full_page)
    assert targets[0].stat().st_size > 0


def list_ids(tab: Page, testid: str) -> list[str]:
    ids: list[str] = tab.eval_on_selector_all(
        f"[data-testid={testid}] [data-movie-id]", "els => els.map(e => e.dataset.movieId)"
    )
    return ids


def wait_list_change(tab: Page, testid: str, before: list[str]) -> list[str]:
    """Wait until the list shows other films than ``before``; the new ids."""
    tab.wait_for_function(
        """([testid, before]) => {
            const ids = [...document.querySelectorAll(`[data-testid=${testid}] [data-movie-id]`)]
                .map(e => e.dataset.movieId);
            return ids.length > 0 && ids.join() !== before.join();
        }""",
        arg=[testid, before],
    )
    return list_ids(tab, testid)


# ------------------------------------------------------------------------------------ tests


def test_first_view_offers_popular_films_and_recommends_after_one_rating(
    page: Page, tmp_path: Path
) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Rate a few films, get recommendations"
    )
    popular = page.get_by_test_id("popular").locator(":scope > li")
    popular.first.wait_for()
    assert popular.count() >= 5
    expect(page.get_by_test_id("recommendations-hint")).to_be_visible()
    expect(page.get_by_label("Search films")).to_be_visible()
    screenshot(page, "first-view", tmp_path)

    first = popular.first
    rated = first.get_attribute("data-movie-id") or ""
    first.locator("label[title='5 stars']").click()
    recs = page.get_by_test_id("recommendations").locator(":scope > li")
    recs.first.wait_for()
    expect(page.get_by_test_id("model-version")).to_contain_text("personalised")
    assert rated not in list_ids(page, "recommendations"), "a rated film is never recommended"
    stored = page.evaluate("JSON.parse(localStorage.getItem('movierec.visitor'))")
    assert stored[rated]["rating"] == 5  # a visitor's rating stays in the browser
    expect(page.get_by_role("link", name="Visitor")).to_be_visible()
    screenshot(page, "first-view-rated", tmp_path)

    # A second rating, of a recommended film, changes the list again.
    before = list_ids(page, "recommendations")
    recs.first.locator("label[title='4 stars']").click()
    after = wait_list_change(page, "recommendations", before)
    assert before[0] not in after
    # The visitor view carries the same ratings on.
    page.goto("/#/visitor")
    expect(page.get_by_test_id("visitor-ratings").locator(":scope > li")).to_have_count(2)


def test_search_and_open_a_movie_shows_similar_films(page: Page, tmp_path: Path) -> None:
    page.goto("/")
    page.get_by_label("Search films").fill("star wars")
    page.get_by_role("button", name="Search").click()
    results = page.get_by_test_id("search-results")
    results.get_by_role("link", name="Star Wars (1977)").click()
    page.wait_for_url("**/#/movie/50")
    expect(page.get_by_role("heading", level=1)).to_have_text("Star Wars")
    similar = page.get_by_test_id("recommendations").locator(":scope > li")
    similar.first.wait_for()
    assert similar.count() >= 3
    assert "50" not in list_ids(page, "recommendations"), "a film is not similar to itself"
    expect(page.get_by_test_id("model-version")).to_have_text(re.compile(r"^Model v\d+ · "))
    screenshot(page, "movie", tmp_path)


def test_visitor_rates_three_films_and_the_list_follows(page: Page, tmp_path: Path) -> None:
    page.goto("/#/visitor")
    recs = page.get_by_test_id("recommendations")
    recs.locator("li").first.wait_for()
    expect(page.get_by_test_id("model-version")).to_contain_text("popular films")
    ids = list_ids(page, "recommendations")
    rated: list[str] = []
    for stars in (5, 4, 5):
        first = recs.locator("li").first
        rated.append(first.get_attribute("data-movie-id") or "")
        first.locator(f"label[title='{stars} stars']").click()
        ids = wait_list_change(page, "recommendations", ids)
        assert not set(rated) & set(ids), "a rated film is never recommended"
    expect(page.get_by_test_id("model-version")).to_contain_text("personalised")
    expect(page.get_by_test_id("visitor-ratings").locator(":scope > li")).to_have_count(3)
    predicted = recs.locator(".predicted").first.inner_text()
    assert "predicted" in predicted and 0.5 <= float(predicted.split()[-2]) <= 5
    # Nothing was stored on the server: the ratings live in this browser only.
    stored = page.evaluate("JSON.parse(localStorage.getItem('movierec.visitor'))")
    assert sorted(stored) == sorted(rated)
    screenshot(page, "visitor", tmp_path)

    # The keyboard works too: arrow keys move along the radio group of stars.
    first = page.get_by_test_id("visitor-ratings").locator("li").first
    first.locator("input[type=radio]:checked").focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        "() => Object.values(JSON.parse(localStorage.getItem('movierec.visitor')))"
        ".some(r => r.rating === 4 || r.rating === 3)"
    )

    # Saving stores the ratings under a new user id and continues as that user.
    page.get_by_label("Save as user id").fill("900001")
    page.get_by_role("button", name="Save as user").click()
    page.wait_for_url("**/#/user/900001")
    expect(page.get_by_test_id("ratings").locator(":scope > li")).to_have_count(3)


def test_user_sees_ratings_and_filtered_recommendations(
    page: Page, server: Server, tmp_path: Path
) -> None:
    ratings = get_json(f"{server.url}/v1/users/1/ratings?limit=30")
    page.goto("/#/user/1")
    expect(page.get_by_test_id("ratings").locator(":scope > li")).to_have_count(
        len(ratings["items"])
    )
    recs = page.get_by_test_id("recommendations")
    recs.locator("li").first.wait_for()
    assert set(list_ids(page, "recommendations")).isdisjoint(
        str(r["movie_id"]) for r in ratings["items"]
    ), "rated films are never recommended"
    screenshot(page, "user", tmp_path)

    page.get_by_text("Genres", exact=True).click()
    page.get_by_label("Comedy", exact=True).check()
    page.get_by_text("Genres (1)", exact=True).wait_for()
    page.get_by_label("From year").fill("1990")
    # Once the list has reloaded, every film is a comedy from 1990 on.
    page.wait_for_function(
        """() => {
            const section = document.querySelector('[data-testid=recommendations]');
            if (!section || !section.closest('[aria-busy=false]')) return false;
            const items = [...section.querySelectorAll(':scope > li')];
            const year = (li) => Number(li.querySelector('.year').innerText.replace(/[()]/g, ''));
            return items.length > 0 && items.every(li =>
                li.querySelector('.chips').innerText.includes('Comedy') && year(li) >= 1990);
        }""",
    )


def test_admin_lists_models_and_follows_a_retrain(
    page: Page, server: Server, tmp_path: Path
) -> None:
    page.goto("/#/admin")
    page.get_by_label("Admin token").fill("not-the-token-at-all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Admin token")).to_be_visible()

    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    models = page.get_by_test_id("models")
    expect(models.locator("tbody tr").first).to_contain_text("v1")
    expect(models.locator("tbody tr").first).to_contain_text("active")
    page.get_by_role("button", name="Learning curve").first.click()
    curve = page.locator("#curve img")
    curve.wait_for()
    page.wait_for_function("() => document.querySelector('#curve img').naturalWidth > 0")

    page.get_by_label("Preset").select_option("fast")
    page.get_by_label("Epochs").fill("2")
    page.get_by_role("button", name="Retrain now").click()
    jobs = page.get_by_test_id("jobs")
    expect(jobs).to_contain_text("queued")  # no worker runs beside this server yet
    expect(jobs.locator("tbody tr").first).to_contain_text("fast preset")
    # A worker picks the job up; the page follows it by polling, without a reload.
    worker = subprocess.run(
        ["movierec", "worker", "--once"],
        env=server.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    expect(jobs.locator("tbody tr").first).to_contain_text("succeeded", timeout=20_000)
    expect(jobs.locator("tbody tr").first).to_contain_text("epoch 2 of 2")
    expect(models.locator("tbody tr")).to_have_count(2)
    # Activating the new version (when the gate did not already) makes it the active one.
    activate = page.get_by_role("button", name="Activate model v2")
    if activate.is_enabled():
        activate.click()
    expect(models.locator("tbody tr").filter(has_text="v2").locator(".badge")).to_have_text(
        "active"
    )
    expect(page.get_by_role("button", name="Activate model v1")).to_be_enabled()
    screenshot(page, "admin", tmp_path, full_page=True)

    # A queued job is cancelled from its row (no worker runs now: it stays queued until then).
    page.get_by_role("button", name="Retrain now").click()
    newest = jobs.locator("tbody tr").first
    expect(newest).to_contain_text("queued")
    newest.get_by_role("button", name="Cancel job").click()
    expect(newest).to_contain_text("cancelled")
    expect(newest).to_contain_text("cancelled by an admin")
    expect(jobs.get_by_role("button", name="Cancel job")).to_have_count(0)


API_KEY = "e2e-api-key-0123456789abcdef"


@pytest.fixture
def keyed_url(server: Server, tmp_path: Path) -> Iterator[str]:
    """A second `movierec serve` on the same store, with user data behind MOVIEREC_API_KEYS."""
    port = free_port()
    log = tmp_path / "keyed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["movierec", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"],
            env={**server.environ, "MOVIEREC_API_KEYS": API_KEY},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_page_asks_for_the_api_key_and_sends_it(browser: Browser, keyed_url: str) -> None:
    context = browser.new_context(viewport=DESKTOP, base_url=keyed_url)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    sent: list[str | None] = []
    tab.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "/v1/users/" in r.url else None,
    )
    try:
        tab.goto("/#/user/1")
        dialog = tab.get_by_test_id("api-key-dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("API key")
        tab.get_by_role("textbox", name="API key").fill(API_KEY)
        tab.get_by_role("button", name="Use this key").click()
        tab.get_by_test_id("recommendations").locator("li").first.wait_for()
        expect(tab.get_by_test_id("ratings").locator(":scope > li").first).to_be_visible()
        expect(dialog).to_have_count(0)
        assert None in sent and f"Bearer {API_KEY}" in sent
        # Kept for the next visit: no question this time.
        tab.reload()
        tab.get_by_test_id("recommendations").locator("li").first.wait_for()
        expect(tab.get_by_test_id("api-key-dialog")).to_have_count(0)
    finally:
        context.close()


def test_errors_show_the_servers_detail(page: Page) -> None:
    page.goto("/#/movie/999999")
    expect(page.get_by_role("alert")).to_contain_text("movie 999999")


def test_keyboard_only_use(page: Page) -> None:
    page.goto("/#/who")
    expect(page.get_by_role("heading", level=1)).to_have_text("Who are you?")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#view")).to_be_focused()
    expect(page.get_by_role("heading", level=1)).to_have_text("Who are you?")  # still there
    page.get_by_label("User id").focus()
    page.keyboard.type("2")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/user/2")
    expect(page.get_by_role("heading", level=1)).to_have_text("User 2")
    expect(page.get_by_role("link", name="User 2")).to_have_attribute("aria-current", "page")


def test_phone_layout_has_no_sideways_scroll(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    context = browser.new_context(viewport=PHONE, base_url=server.url, is_mobile=True)
    tab = context.new_page()
    try:
        for route, testid in (
            ("/#/user/1", "ratings"),
            ("/#/", "popular"),
            ("/#/search?q=star", "search-results"),
        ):
            tab.goto(route)
            tab.get_by_test_id(testid).locator("li").first.wait_for()
            width = tab.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{route} is {width} px wide on a 390 px phone"
        tab.goto("/#/visitor")
        tab.get_by_test_id("recommendations").locator("li").first.wait_for()
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"#/visitor is {width} px wide on a 390 px phone"
        screenshot(tab, "phone", tmp_path)
    finally:
        context.close()


def test_api_reference_pages_work_offline(page: Page) -> None:
    """Swagger UI and ReDoc render from the app's own assets (the fixture fails the test on any
    request outside the app or any script error)."""
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("movierec")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() >= 10
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon == "/static/favicon.svg"

    page.goto("/redoc")
    expect(page.get_by_role("heading", level=1)).to_contain_text("movierec")
    expect(page.get_by_text("Search the catalogue").first).to_be_attached()
