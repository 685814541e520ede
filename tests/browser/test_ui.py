"""The web UI in a real browser (Debian's chromium, driven by Playwright) against a real ``skybus up``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it): skipped without
it, failed instead on CI. Playwright's own browser download is never used. Screenshots of the pages
go to ``tests/browser/artifacts/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.e2e.harness import Skybus
from tests.rabbit import unavailable

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 30_000
LIVE_GAP = 2  # seconds between a job's two lines: the first must show before the second is written
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

pytestmark = pytest.mark.e2e


async def sign_in(page: Page, skybus: Skybus) -> None:
    await page.goto(f"{skybus.url}/ui")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in button")
    await expect(page.locator("#flash")).to_contain_text("refused")
    assert skybus.token
    await page.fill("#token", skybus.token)
    await page.click("#sign-in button")
    await expect(page.locator("#who")).to_have_text("admin (admin)")
    await expect(page.locator("#live")).to_have_text("live")


async def run_from_the_form(page: Page, command: str, output_files: str = "") -> None:
    await page.goto(page.url.split("#")[0] + "#/")
    await page.fill("#run input[name=command]", command)
    await page.fill("#run input[name=output_files]", output_files)
    await page.click("#run button")
    await expect(page.locator("#job-state")).to_be_visible()


async def watch_a_live_log_and_download_an_output(page: Page, skybus: Skybus) -> None:
    """The job page follows the log while the job runs: the first line is there before the job ends."""
    command = f"echo first line; sleep {LIVE_GAP}; echo second line >&2; echo kept > out.txt"
    await run_from_the_form(page, command, output_files="out.txt")
    job_id = page.url.rsplit("/", 1)[-1]
    await expect(page.locator("#log .stdout")).to_have_text("first line\n", timeout=WAIT_MS)
    status, job = await skybus.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 200 and job["state"] == "running", job  # seen live, not read after the end
    await page.screenshot(path=ARTIFACTS / "job-live-log.png", full_page=True)
    await expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
    await expect(page.locator("#log .stderr")).to_have_text("second line\n", timeout=WAIT_MS)
    await expect(page.locator("#log-state")).to_have_text("ended")
    link = page.locator("#output-list a", has_text="out.txt")
    await expect(link).to_have_attribute("data-data-id", re.compile(UUID), timeout=WAIT_MS)
    async with page.expect_download() as download_info:
        await link.click()
    download = await download_info.value
    assert download.suggested_filename == "out.txt"
    assert Path(await download.path()).read_bytes() == b"kept\n"


async def test_a_user_signs_in_sees_a_host_runs_a_job_and_cancels_another(tmp_path, capsys) -> None:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    skybus = await Skybus(tmp_path / "data").start()
    try:
        status, hosts = await skybus.call("GET", "/v1/hosts")
        assert status == 200 and hosts, hosts
        hostname = hosts[0]["info"]["hostname"]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await sign_in(page, skybus)
            host = page.locator("#hosts tbody tr", has_text=hostname)
            await expect(host).to_contain_text("yes", timeout=WAIT_MS)  # responding

            await run_from_the_form(page, "echo hello from the browser")
            await expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
            await expect(page.locator("#stdout")).to_have_text("hello from the browser\n", timeout=WAIT_MS)
            await expect(page.locator("#answer-exit")).to_have_text("0")
            await expect(page.locator("#history li")).to_have_count(5)  # pending ... succeeded
            await page.screenshot(path=ARTIFACTS / "job-succeeded.png", full_page=True)

            await watch_a_live_log_and_download_an_output(page, skybus)

            await page.click("text=← all jobs")  # the list follows a job run elsewhere, live
            status, created = await skybus.call("POST", "/api/job/run", json={"command": "echo from curl"})
            assert status == 201
            row = page.locator(f'#jobs tr[data-job-id="{created["job_id"]}"]')
            await expect(row).to_contain_text("succeeded", timeout=WAIT_MS)
            upload = {"name": "input.csv", "mimeType": "text/csv", "buffer": b"a,b\n1,2\n"}
            await page.set_input_files("#upload", files=[upload])
            await expect(page.locator("#data tbody tr", has_text="input.csv")).to_contain_text("8")  # bytes
            await page.screenshot(path=ARTIFACTS / "home.png", full_page=True)

            await run_from_the_form(page, "sleep 30")
            await expect(page.locator("#job-state")).to_have_text("running", timeout=WAIT_MS)
            await page.click("#cancel")
            await expect(page.locator("#job-state")).to_have_text("cancelled", timeout=WAIT_MS)
            await page.screenshot(path=ARTIFACTS / "job-cancelled.png", full_page=True)
            await browser.close()
    finally:
        assert await skybus.stop() == 0, skybus.log[-20:]
    with capsys.disabled():
        print(f"\nbrowser test: {time.monotonic() - started:.1f} s; screenshots in {ARTIFACTS}")
