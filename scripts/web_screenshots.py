"""Screenshots of the web application's main pages for README, taken from a real service.

Starts `pneumotriage serve` on throwaway folders, sends the fixture radiographs as DICOM
studies of made-up patients with DCMTK's storescu, waits for them to be triaged, and has
Debian's Chromium (through Selenium) photograph the pages at 1280 px wide:

    .venv/bin/python scripts/web_screenshots.py            # writes docs/screenshots/*.png

Needs what `make test` installs (DCMTK, chromium, chromium-driver).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dicom_factory import fixture_images, grey_pixels, make_dataset, write  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

PASSWORD = "screenshot password"
PATIENTS = [
    "Garcia^Maria",
    "Okafor^Chidi",
    "Nguyen^Linh",
    "Schmidt^Anna",
    "Haddad^Omar",
    "Kowalski^Piotr",
    "Tanaka^Yui",
    "Silva^Joao",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    command = [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml")]
    return subprocess.run(
        [*command, *args], env=env, input=stdin, capture_output=True, text=True, check=True
    ).stdout


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _shoot(driver: webdriver.Chrome, out: Path, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 700), 2400))
    driver.save_screenshot(str(out / f"{name}.png"))
    print(out / f"{name}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pneumotriage-screens-"))
    dicom_port, web_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PNEUMOTRIAGE_DICOM_PORT": str(dicom_port),
        "PNEUMOTRIAGE_WEB_PORT": str(web_port),
        "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{work / 'pneumotriage.db'}",
        "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(work / "storage"),
        "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(work / "reports"),
        "PNEUMOTRIAGE_WORKER_INTERVAL_SECONDS": "0.5",
        "PNEUMOTRIAGE_WORKER_STUDY_SETTLE_SECONDS": "1",
    }
    for name, role in (("dr.lee", "radiologist"), ("admin", "admin")):
        _cli(env, "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD)
    web = f"http://127.0.0.1:{web_port}"
    with (work / "serve.log").open("wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml"), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(lambda: _answers(web + "/healthz"), 180, "the web application")
        files = []
        for index, image in enumerate(fixture_images()[: len(PATIENTS)]):
            dataset = make_dataset(
                grey_pixels(image),
                patient_name=PATIENTS[index],
                accession_number=f"A{2026120100 + index}",
            )
            files.append(str(write(dataset, work / "send")))
        subprocess.run(
            ["storescu", "-aec", "PNEUMOTRIAGE", "127.0.0.1", str(dicom_port), *files],
            check=True,
            capture_output=True,
        )
        _wait(lambda: "pending" not in _cli(env, "history", "--format", "csv"), 180, "the triage")
        time.sleep(3)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,900"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(web + "/login")
            _shoot(driver, args.out, "login")
            driver.find_element(By.NAME, "username").send_keys("dr.lee")
            driver.find_element(By.NAME, "password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
            _wait(lambda: driver.find_elements(By.ID, "worklist"), 20, "the worklist")
            _shoot(driver, args.out, "worklist")
            driver.find_element(By.CSS_SELECTOR, "#worklist tbody tr.flagged a").click()
            _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "img.radiograph"), 20, "study")
            toggle = driver.find_elements(By.CSS_SELECTOR, "label[for^='heatmap-']")
            if toggle:
                toggle[0].click()
            time.sleep(1)
            _shoot(driver, args.out, "study")
            driver.get(web + "/history")
            _shoot(driver, args.out, "history")
            driver.get(web + "/try")
            driver.find_element(By.ID, "file").send_keys(str(fixture_images()[-1]))
            driver.find_element(By.CSS_SELECTOR, "form.upload button").click()
            _wait(lambda: driver.find_elements(By.ID, "verdict"), 120, "the verdict")
            _shoot(driver, args.out, "try")
            driver.get(web + "/about")
            _shoot(driver, args.out, "about")
            driver.delete_all_cookies()
            driver.get(web + "/login")
            driver.find_element(By.NAME, "username").send_keys("admin")
            driver.find_element(By.NAME, "password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
            _wait(lambda: driver.find_elements(By.ID, "worklist"), 20, "the worklist")
            driver.get(web + "/status")
            _shoot(driver, args.out, "status")
        finally:
            driver.quit()
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
