"""The console in a real browser: headless Chromium from Debian's packages (`chromium`,
`chromium-driver`) driven by Selenium, against `cdr run` with CDRs published to a real
Kafka. Every step saves a screenshot under `artifacts/console/` (CI keeps the folder).
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdr.api.auth import token_digest
from tests.api.conftest import free_port
from tests.helpers import cdr_process, encoded, events, produce, service_env

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "console"
TENANT, OTHER = "console.example", "other.example"
TOKEN = "console-token-" + "k" * 20
CALLS = 480  # of TENANT: several scroll batches of 100 in the filtered view too
BATCH = 100
VIETNAMESE = "Phòng chăm sóc khách hàng, Hà Nội"


@dataclass
class Console:
    url: str
    download_dir: Path
    bootstrap: str
    topic: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


@pytest.fixture(scope="module")
async def console(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap,
        folder / "store",
        api_port=port,
        api_tokens=f"{TENANT}:{token_digest(TOKEN)},{OTHER}:{token_digest(TOKEN + 'x')}",
        cursor_secret="c" * 40,
        batch_time_ms=200,
        timezone="Asia/Ho_Chi_Minh",
    )
    ours = [
        {**e, "receive_dest": VIETNAMESE} if e["tenant_id"] == TENANT else e
        for e in events(CALLS * 2, seed=15, tenants=(TENANT, OTHER), spacing_s=450)
    ]
    with cdr_process("run", env, folder / "run.log"):
        await produce(kafka_bootstrap, topic, encoded(ours))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for _ in range(240):
                try:
                    page = await client.get("/v1/cdr", params={"page": "1", "limit": "1"})
                    if page.status_code == 200 and page.json()["total"] == CALLS:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            else:
                pytest.fail(f"the {CALLS} CDRs did not become readable; see {folder / 'run.log'}")
        yield Console(url, folder / "downloads", kafka_bootstrap, topic)


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "the console tests need Debian's chromium and chromium-driver packages"
            " (apt-get install chromium chromium-driver; make test installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,768"):
        options.add_argument(argument)
    console.download_dir.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(console.download_dir), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # a stale or missing element while the page updates
            value = None
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def _shown(driver: Any, element_id: str) -> Any:
    element = _by_id(driver, element_id)
    return element if element.is_displayed() else None


def _rows(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr"))


def _sign_in(driver: Any, console: Console, token: str = TOKEN) -> None:
    driver.get(console.url + "/console")
    driver.execute_script("sessionStorage.clear()")
    driver.get(console.url + "/console")
    _by_id(driver, "token").send_keys(token)
    _by_id(driver, "sign-in-button").click()


def _set_date(driver: Any, element_id: str, value: str) -> None:
    # datetime-local inputs take typed keys in the locale's order; set the value as a page script would.
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)


def _filtered(driver: Any) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_by_id(driver, "f-status")).select_by_value("ANSWERED")
    _set_date(driver, "f-start_date", "2024-05-01T00:00:00")
    _set_date(driver, "f-end_date", "2024-05-03T23:59:59")
    _by_id(driver, "apply").click()


FILTERS = {"status": "ANSWERED", "start_date": "2024-05-01 00:00:00", "end_date": "2024-05-03 23:59:59"}


def _scroll_all(console: Console, params: dict[str, str]) -> list[dict[str, Any]]:
    with console.client() as client:
        answer = client.get("/v1/cdr", params={**params, "scroll": "true", "limit": "1000", "order": "desc"}).json()
        records = list(answer["data"])
        while answer["scroll_id"]:
            answer = client.get("/v1/cdr", params={"scroll_id": answer["scroll_id"]}).json()
            records.extend(answer["data"])
    return records


def test_a_wrong_token_is_refused_and_the_right_one_shows_the_newest_calls(browser: Any, console: Console) -> None:
    _sign_in(browser, console, token="not-a-token-" + "z" * 20)
    error = _wait(lambda: _shown(browser, "sign-in-error"), "refusal")
    assert "refused" in error.text
    _shot(browser, "01-wrong-token")

    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    newest = _scroll_all(console, {})[:BATCH]
    shown = [row.get_attribute("data-id") for row in _rows(browser)[:BATCH]]
    assert shown == [r["id"] for r in newest]
    assert browser.execute_script("return window.location.href").endswith("/console")  # no token in the URL
    _shot(browser, "02-signed-in")


def test_filters_by_status_and_date_and_scrolls_past_the_first_batch(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _filtered(browser)
    expected = _scroll_all(console, FILTERS)
    assert len(expected) > BATCH, "too few matching calls to scroll: the test proves nothing"
    _wait(lambda: _by_id(browser, "count").text.startswith(f"{BATCH} calls"), "the filtered first batch")
    _shot(browser, "03-filtered")
    while len(_rows(browser)) < len(expected):
        before = len(_rows(browser))
        browser.execute_script("const w = document.getElementById('table-wrap'); w.scrollTop = w.scrollHeight")
        _wait(lambda before=before: len(_rows(browser)) > before, "the next batch on scrolling")
    _shot(browser, "04-scrolled")
    assert [row.get_attribute("data-id") for row in _rows(browser)] == [r["id"] for r in expected]
    statuses = {row.find_elements("tag name", "td")[5].text for row in _rows(browser)}
    assert statuses == {"ANSWERED"}
    assert _by_id(browser, "count").text == f"{len(expected)} calls"  # no more to load


def test_a_row_opens_the_call_with_its_recording_link(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    row = _rows(browser)[3]
    wanted = row.get_attribute("data-id")
    row.click()
    dialog = _wait(lambda: _shown(browser, "detail"), "the detail view")
    with console.client() as client:
        record = client.get(f"/v1/cdr/{wanted}").json()
    terms = [e.text for e in dialog.find_elements("css selector", "dt")]
    values = [e.text for e in dialog.find_elements("css selector", "dd")]
    shown = dict(zip(terms, values, strict=True))
    assert terms == list(record)
    assert shown["id"] == record["id"] and shown["sip_call_id"] == record["sip_call_id"]
    assert shown["receive_dest"] == record["receive_dest"] == VIETNAMESE  # Vietnamese text as sent
    links = dialog.find_elements("css selector", "#detail-recording a")
    if record["recording_url"]:
        assert [link.get_attribute("href") for link in links] == [record["recording_url"]]
    else:
        assert not links and "No recording" in _by_id(browser, "detail-recording").text
    _shot(browser, "05-detail")
    _by_id(browser, "detail-close").click()


def test_export_downloads_the_filtered_calls_as_the_api_exports_them(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _filtered(browser)
    _wait(lambda: _by_id(browser, "count").text.startswith(f"{BATCH} calls"), "the filtered first batch")
    for old in console.download_dir.glob("*"):
        old.unlink()
    _by_id(browser, "export").click()
    done = _wait(lambda: [p for p in console.download_dir.glob("*.csv") if p.stat().st_size > 0], "the downloaded file")
    _shot(browser, "06-exported")
    with console.client() as client:
        api = client.get("/v1/cdr/export", params={**FILTERS, "format": "csv", "bom": "true", "order": "desc"})
    assert done[0].name.startswith(f"cdr-{TENANT}-") and done[0].suffix == ".csv"
    assert done[0].read_bytes() == api.content
    rows = list(csv.reader(io.StringIO(api.content.decode("utf-8-sig"))))
    assert len(rows) - 1 == len(_scroll_all(console, FILTERS))


def test_charts_draw_calls_by_status_asr_acd_and_top_extensions(browser: Any, console: Console) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _by_id(browser, "tab-charts").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-calls svg rect"), "the calls chart")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-extensions svg rect"), "the extensions chart")
    _shot(browser, "07-charts")
    with console.client() as client:
        by_day = client.get("/v1/cdr/stats", params={"group_by": "day"}).json()["data"]
        by_status = client.get("/v1/cdr/stats", params={"group_by": "status"}).json()["data"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-calls svg rect")
    drawn: dict[str, int] = {}
    for bar in bars:
        title = bar.find_element(By.TAG_NAME, "title").get_attribute("textContent")
        series = bar.get_attribute("data-series")
        drawn[series] = drawn.get(series, 0) + int(title.rsplit(": ", 1)[1])
    assert sum(drawn.values()) == sum(g["calls"] for g in by_day) == CALLS
    assert {k: v for k, v in drawn.items() if k != "other"} == {
        g["group"]: g["calls"] for g in by_status if g["group"] in drawn
    }
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-asr svg circle")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-acd svg circle")
    legend = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#legend-calls span")]
    assert legend[:2] == ["ANSWERED", "NO ANSWER"]


def test_an_expired_token_returns_to_sign_in_with_the_reason(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    browser.execute_script("sessionStorage.setItem('cdr.token', 'revoked-' + 'r'.repeat(30))")
    _by_id(browser, "apply").click()
    error = _wait(lambda: _shown(browser, "sign-in-error"), "")
    assert "expired or was revoked" in error.text
    assert not _by_id(browser, "console").is_displayed()
    _shot(browser, "08-expired")


def test_an_api_error_is_shown_with_its_message(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _set_date(browser, "f-start_date", "2024-05-03T00:00:00")
    _set_date(browser, "f-end_date", "2024-05-01T00:00:00")
    _by_id(browser, "apply").click()
    error = _wait(lambda: _shown(browser, "error"), "the API's error")
    assert "end_date" in error.text or "start_date" in error.text, error.text
    _shot(browser, "09-api-error")


def test_filters_that_match_nothing_say_so(browser: Any, console: Console) -> None:
    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _by_id(browser, "f-phone").send_keys("0123456789")
    _by_id(browser, "apply").click()
    empty = _wait(lambda: _shown(browser, "empty"), "the empty state")
    assert empty.text == "No calls match these filters." and not _rows(browser)
    assert _by_id(browser, "count").text == "0 calls"
    _shot(browser, "10-empty")


# Last in this module: it adds calls, which the counts above do not expect.
def test_live_shows_a_new_call_as_it_arrives_and_its_correction_in_place(browser: Any, console: Console) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console)
    _wait(lambda: len(_rows(browser)) >= BATCH, "the first batch")
    _by_id(browser, "live").click()
    _wait(lambda: _by_id(browser, "live-state").text == "watching for new calls", "live to start")
    shown = len(_rows(browser))
    started = datetime.now(UTC) - timedelta(minutes=10)
    ours, theirs = events(2, seed=16, tenants=(TENANT, OTHER), start=started)
    asyncio.run(produce(console.bootstrap, console.topic, encoded([theirs, ours])))

    def first_row_is_ours() -> bool:
        rows = _rows(browser)
        return bool(rows) and rows[0].get_attribute("data-id") == ours["id"]

    _wait(first_row_is_ours, "the new call at the top of the table", timeout=30)
    _shot(browser, "11-live")
    rows = _rows(browser)
    assert len(rows) == shown + 1  # added to the table, not a reload (a reload shows one batch)
    assert "fresh" in (rows[0].get_attribute("class") or "")
    assert theirs["id"] not in {row.get_attribute("data-id") for row in rows}
    with console.client() as client:
        record = client.get(f"/v1/cdr/{ours['id']}").json()
    cells = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == record["time_started"] and cells[5] == record["status"] and cells[8] == record["cause"]

    emitted = datetime.fromisoformat(ours["emitted_at"]) + timedelta(seconds=30)
    corrected = {
        **ours,
        "status": "FAILED",
        "cause": "CORRECTED_BY_THE_PBX",
        "billsec": 0,
        "time_answered": None,
        "recording_url": None,
        "emitted_at": emitted.isoformat(),
    }
    asyncio.run(produce(console.bootstrap, console.topic, encoded([corrected])))
    _wait(
        lambda: _rows(browser)[0].find_elements(By.TAG_NAME, "td")[8].text == "CORRECTED_BY_THE_PBX",
        "the correction shown in the call's row",
        timeout=30,
    )
    assert len(_rows(browser)) == shown + 1  # the same row, updated
    _by_id(browser, "live").click()
    assert _by_id(browser, "live-state").text == ""
