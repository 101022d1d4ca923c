"""The web application in a real browser: Debian's Chromium, driven through Selenium.

The whole service runs (`pneumotriage serve`: node, worker, web), a study is sent with
DCMTK's storescu, and a signed-in radiologist watches it appear on the open worklist without
a reload, opens it, changes the window, shows the heatmap, records a reading, and tries the
upload page. Nothing is downloaded: the browser and its driver are the Debian packages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT, Service, free_port, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "radiologist password"
PNEUMOTRIAGE = [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml")]

pytestmark = pytest.mark.interop


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or shutil.which("storescu") is None:
        message = f"{', '.join(missing) or 'storescu'} missing (`make test` installs them)"
        if IN_CI:
            pytest.fail(f"CI must run the browser tests: {message}")
        pytest.skip(message)


def browser() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)


def add_user(service: Service, name: str, role: str) -> None:
    subprocess.run(
        [*PNEUMOTRIAGE, "user", "add", name, "--role", role, "--password-stdin"],
        input=PASSWORD + "\n",
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    _require_browser()
    web_port = free_port()
    running = Service(
        tmp_path_factory.mktemp("web"),
        web_port=str(web_port),
        worker_study_settle_seconds="1",
        web_refresh_seconds="1",
    )
    running.web = f"http://127.0.0.1:{web_port}"  # type: ignore[attr-defined]
    add_user(running, "rad", "radiologist")
    running.start()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(running.web + "/healthz", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    wait_until(answers, 60, "the web application to answer")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def driver(site: Service) -> Iterator[object]:
    chrome = browser()
    yield chrome
    chrome.quit()


def sign_in(driver: object, web: str, username: str = "rad") -> None:
    from selenium.webdriver.common.by import By

    driver.get(web + "/login")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait_until(lambda: driver.find_elements(By.ID, "worklist"), 20, "the worklist after sign-in")


def test_signed_out_pages_redirect_to_sign_in(site: Service, driver: object) -> None:
    driver.delete_all_cookies()
    for path in ["/", "/history", "/try", "/reports"]:
        driver.get(site.web + path)
        assert "/login?next=" in driver.current_url, path
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(site.web + "/api/studies", timeout=10)
    assert refused.value.code == 401


def test_a_stored_study_appears_on_the_open_worklist_and_is_read(
    site: Service, driver: object, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    sign_in(driver, site.web)
    driver.execute_script("window.stillTheSamePage = true;")
    dataset = make_dataset(
        grey_pixels(fixture_images()[-1]),
        patient_name="Browser^Betty",
        accession_number="WEB1",
    )
    path = write(dataset, tmp_path)
    assert site.store(path).returncode == 0

    def row() -> str | None:
        """The row's text once triaged; the table may be replaced between two reads."""
        try:
            rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
            return next(
                (r.text for r in rows if "Browser, Betty" in r.text and "flag at" in r.text), None
            )
        except StaleElementReferenceException:
            return None

    wait_until(row, 120, "the study to appear, triaged, on the open worklist")
    assert driver.execute_script("return window.stillTheSamePage === true;")

    def opened() -> bool:
        try:
            driver.find_element(By.PARTIAL_LINK_TEXT, "Browser, Betty").click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(opened, 20, "the study link")

    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "img.radiograph"), 20, "study")
    default = driver.find_element(By.CSS_SELECTOR, "img.radiograph").get_attribute("src")
    driver.find_element(By.LINK_TEXT, "Inverted").click()
    wait_until(
        lambda: (
            "preset=invert"
            in driver.find_element(By.CSS_SELECTOR, "img.radiograph").get_attribute("src")
        ),
        20,
        "the inverted preset",
    )
    image = driver.find_element(By.CSS_SELECTOR, "img.radiograph")
    assert image.get_attribute("src") != default
    wait_until(
        lambda: driver.execute_script("return arguments[0].naturalWidth;", image) > 0,
        20,
        "the inverted image to load",
    )
    heatmap = driver.find_element(By.CSS_SELECTOR, "img.heatmap")
    assert not heatmap.is_displayed()
    driver.find_element(By.CSS_SELECTOR, "label[for^='heatmap-']").click()
    assert heatmap.is_displayed()

    driver.find_element(By.CSS_SELECTOR, "input[name='finding'][value='present']").click()
    driver.find_element(By.ID, "comment").send_keys("consolidation right base <b>")
    driver.find_element(By.CSS_SELECTOR, "form.feedback button").click()
    table = wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, "table.feedback-list"), 20, "feedback"
    )[0]
    assert "consolidation right base <b>" in table.text
    assert "rad" in table.text

    history = json.loads(
        site.cli(
            "history", "--level", "study", "--accession-number", "WEB1", "--format", "json"
        ).stdout
    )
    assert history[0]["feedback_finding"] == "present"
    assert history[0]["feedback_by"] == "rad"


def test_try_it_classifies_a_jpeg_and_refuses_a_text_file(
    site: Service, driver: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(driver, site.web)
    driver.get(site.web + "/try")
    driver.find_element(By.ID, "file").send_keys(str(fixture_images()[0]))
    driver.find_element(By.CSS_SELECTOR, "form.upload button").click()
    verdict = wait_until(lambda: driver.find_elements(By.ID, "verdict"), 120, "a verdict")[0]
    assert "flag at" in verdict.text
    assert verdict.text.split(":")[0].split()[-1] in {"PNEUMONIA", "NORMAL"}
    text = tmp_path / "notes.txt"
    text.write_text("not a radiograph")
    driver.find_element(By.ID, "file").send_keys(str(text))
    driver.find_element(By.CSS_SELECTOR, "form.upload button").click()
    error = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "p.error"), 60, "refusal")
    assert "cannot be classified" in error[0].text
