"""The web application over HTTP: sign-in, roles, CSRF, throttling, the worklist, the study
view, feedback, history and its exports, the API, try-it, about, reports, status, health.

The application runs as it does in production (FastAPI with the real SQLite database, the
shipped model under TensorFlow, the real report renderer), driven by Starlette's test client;
`test_web_browser.py` drives it in Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.accounts import add_token, add_user, disable_user
from core.config import Config, load_config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.schema import AuditEvent, DriftCheck, Feedback, Instance, Role
from core.db.types import utcnow
from core.heartbeat import beat
from core.lifecycle import Triage, claim, complete, enqueue, reject
from core.registration import InstanceMetadata, StoredFile
from pneumotriage.service import Database, web_application
from worker.settle import settle_studies

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
HOSTILE = "<script>alert(1)</script>\"'=HYPERLINK(1)"


@dataclass
class Site:
    config: Config
    sessions: sessionmaker[Session]
    client: TestClient
    studies: dict[str, str]

    def sign_in(self, username: str = "rad", password: str = PASSWORD) -> object:
        form = self.client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
        return self.client.post(
            "/login",
            data={"username": username, "password": password, "login_token": token, "next": "/"},
            follow_redirects=False,
        )

    def csrf(self, path: str = "/") -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.client.get(path).text).group(1)


def _register(sessions: sessionmaker[Session], storage: Path, **fields: object) -> str:
    dataset = make_dataset(grey_pixels(fixture_images()[0]), **fields)
    relative = f"{dataset.StudyInstanceUID}/{dataset.SOPInstanceUID}.dcm"
    write(dataset, storage / dataset.StudyInstanceUID, f"{dataset.SOPInstanceUID}.dcm")
    with sessions() as session:
        enqueue(
            session,
            InstanceMetadata.from_dataset(dataset),
            StoredFile(relative, 1, str(dataset.file_meta.TransferSyntaxUID), "MODALITY"),
        )
        session.commit()
    return str(dataset.SOPInstanceUID)


def _picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (150, 150), 200).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """Three studies: flagged 0.95, flagged 0.72 (hostile name), not flagged 0.10 (settled),
    one rejected, one waiting; a radiologist and an admin."""
    monkeypatch.setenv("PNEUMOTRIAGE_DATABASE_URL", f"sqlite:///{tmp_path / 'web.db'}")
    monkeypatch.setenv("PNEUMOTRIAGE_STORAGE_DIRECTORY", str(tmp_path / "storage"))
    monkeypatch.setenv("PNEUMOTRIAGE_REPORTS_DIRECTORY", str(tmp_path / "reports"))
    config = load_config(ROOT / "config.toml")
    engine = make_engine(config.database.url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    storage = config.storage.directory
    keys = {
        "high": dict(patient_name="Beta^Bob", accession_number="B1", study_uid="1.2.3.1"),
        "hostile": dict(patient_name=HOSTILE, accession_number="=1+1", study_uid="1.2.3.2"),
        "normal": dict(patient_name="Gamma^Gil", accession_number="C1", study_uid="1.2.3.3"),
        "ct": dict(patient_name="Delta^Dee", accession_number="D1", study_uid="1.2.3.4"),
    }
    sops = {key: _register(sessions, storage, **fields) for key, fields in keys.items()}
    scores = {"high": 0.95, "hostile": 0.72, "normal": 0.10}
    with sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 10, 300)}
        for key, score in scores.items():
            flagged = score >= 0.5
            triage = Triage(
                score,
                "PNEUMONIA" if flagged else "NORMAL",
                flagged,
                0.5,
                "cnn-lstm-ensemble",
                "v1",
                "",
                _picture(),
                _picture(),
            )
            complete(session, works[sops[key]], "w", triage)
        reject(session, works[sops["ct"]], "w", "not a chest radiograph: modality CT")
        session.commit()
        settle_studies(session, 0, "max")
        session.commit()
    _register(sessions, storage, patient_name="Epsilon^Eve", accession_number="E1")
    with sessions() as session:
        add_user(session, "rad", Role.RADIOLOGIST, PASSWORD, "test")
        add_user(session, "boss", Role.ADMIN, PASSWORD, "test")
        session.commit()
    app = web_application(config, Database(engine, sessions))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield Site(config, sessions, client, {k: v["study_uid"] for k, v in keys.items()})
    engine.dispose()


PATIENT_PAGES = ["/", "/worklist/rows", "/history", "/try", "/reports", "/studies/1"]


def test_pages_with_patient_data_send_a_stranger_to_sign_in(site: Site) -> None:
    for path in PATIENT_PAGES:
        response = site.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next="), path
    for path in ["/api/studies", "/api/results", "/api/feedback", "/api/studies/1.2.3.1"]:
        response = site.client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert site.client.get("/login").status_code == 200


def test_sign_in_sets_a_strict_http_only_cookie_and_opens_the_worklist(site: Site) -> None:
    response = site.sign_in()
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "pt_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = site.client.get("/")
    assert page.status_code == 200
    assert "Worklist" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_a_wrong_password_and_an_unknown_name_read_the_same(site: Site) -> None:
    wrong = site.sign_in(password="not the password")
    unknown = site.sign_in(username="nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert "Unknown user name or wrong password" in wrong.text
    assert "Unknown user name or wrong password" in unknown.text


def test_failed_sign_ins_are_throttled_even_for_the_right_password(site: Site) -> None:
    for _ in range(site.config.web.login_max_failures):
        assert site.sign_in(password="guess").status_code == 401
    refused = site.sign_in()
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.text
    with site.sessions() as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"sign_in_failed", "sign_in_throttled"} <= actions


def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    site.sign_in()
    for path, data in [
        ("/worklist/filter", {"flagged_only": "true"}),
        ("/studies/1/feedback", {"finding": "present"}),
        ("/logout", {}),
    ]:
        assert site.client.post(path, data=data).status_code == 403, path
        forged = site.client.post(path, data=data | {"csrf_token": "forged"})
        assert forged.status_code == 403, path
    with site.sessions() as session:
        assert session.scalar(select(Feedback)) is None
    login = site.client.post("/login", data={"username": "rad", "password": PASSWORD})
    assert login.status_code == 403


def _row_order(html: str) -> list[str]:
    return re.findall(r'data-study="([^"]+)"', html)


def test_worklist_ranks_flagged_by_score_then_the_others_by_waiting(site: Site) -> None:
    site.sign_in()
    order = _row_order(site.client.get("/").text)
    assert order[:2] == [site.studies["high"], site.studies["hostile"]]
    assert set(order[2:]) >= {site.studies["normal"], site.studies["ct"]}
    assert len(order) == 5
    html = site.client.get("/").text
    assert "score above 0.99" not in html
    assert "score 0.95, flag at 0.50" in html
    assert "%" not in re.sub(r"<[^>]+>", "", html.split("<tbody>")[1])


def test_worklist_filters_live_in_the_session_not_the_url(site: Site) -> None:
    site.sign_in()
    token = site.csrf()
    response = site.client.post(
        "/worklist/filter",
        data={"csrf_token": token, "text": "gamma gil", "period": ""},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"
    assert _row_order(site.client.get("/").text) == [site.studies["normal"]]
    site.client.post("/worklist/filter", data={"csrf_token": token, "state": "rejected"})
    assert _row_order(site.client.get("/worklist/rows").text) == [site.studies["ct"]]
    site.client.post("/worklist/filter", data={"csrf_token": token, "flagged_only": "true"})
    assert _row_order(site.client.get("/").text) == [site.studies["high"], site.studies["hostile"]]


def _study_id(site: Site, key: str) -> int:
    html = site.client.get("/").text
    pairs = re.findall(r'data-study="([^"]+)">.*?href="/studies/(\d+)"', html, re.S)
    return int(dict(pairs)[site.studies[key]])


def test_study_view_shows_images_presets_heatmap_and_audits_the_view(site: Site) -> None:
    site.sign_in()
    study = _study_id(site, "high")
    html = site.client.get(f"/studies/{study}").text
    assert "score 0.95, flag at 0.50" in html
    assert "cnn-lstm-ensemble v1" in html
    assert 'class="toggle"' in html and "Show heatmap" in html
    assert "Visual aid, not a localisation" in html
    presets = re.findall(r'href="\?preset=([a-z0-9-]+)"', html)
    assert presets[:1] == ["default"] and {"full", "contrast", "invert"} <= set(presets)
    assert "ViewPosition" in html
    image_paths = re.findall(r'src="(/images/\d+\.png)\?preset=default"', html)
    pictures = {}
    for preset in ("default", "contrast", "invert"):
        response = site.client.get(f"{image_paths[0]}?preset={preset}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        pictures[preset] = Image.open(io.BytesIO(response.content)).convert("L")
    assert pictures["default"].tobytes() != pictures["invert"].tobytes()
    assert pictures["default"].tobytes() != pictures["contrast"].tobytes()
    heatmap = site.client.get(image_paths[0].replace(".png", "/heatmap.png"))
    assert Image.open(io.BytesIO(heatmap.content)).mode == "RGBA"
    with site.sessions() as session:
        viewed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "study_viewed")
        ).all()
    assert [(e.actor, e.study_instance_uid) for e in viewed] == [("rad", site.studies["high"])]


def test_a_study_whose_files_retention_removed_shows_its_thumbnail(site: Site) -> None:
    site.sign_in()
    study = _study_id(site, "high")
    with site.sessions() as session:
        session.execute(update(Instance).values(purged_at=utcnow()))
        session.commit()
    html = site.client.get(f"/studies/{study}").text
    assert "removed by retention" in html and "score 0.95, flag at 0.50" in html
    (thumbnail,) = re.findall(r'class="radiograph" src="(/images/\d+/thumbnail\.png)"', html)
    assert site.client.get(thumbnail).headers["content-type"] == "image/png"


def test_feedback_is_stored_shown_and_exported_by_history(site: Site) -> None:
    site.sign_in()
    study = _study_id(site, "normal")
    token = site.csrf(f"/studies/{study}")
    response = site.client.post(
        f"/studies/{study}/feedback",
        data={"csrf_token": token, "finding": "present", "comment": "left lower lobe"},
    )
    assert response.status_code == 200
    assert "left lower lobe" in response.text
    with site.sessions() as session:
        entry = session.scalar(select(Feedback))
    assert entry.finding == "present" and entry.agrees is False
    exported = json.loads(
        site.client.get(
            f"/history?level=study&format=json&study_instance_uid={site.studies['normal']}"
        ).text
    )
    assert exported[0]["feedback_finding"] == "present"
    assert exported[0]["feedback_by"] == "rad"
    assert exported[0]["feedback_agrees"] is False


def test_history_exports_are_spreadsheet_safe_and_repeat_the_search(site: Site) -> None:
    site.sign_in()
    html = site.client.get("/history?level=instance&flagged=true").text
    link = re.search(r'href="(/history\?[^"]*format=csv)"', html).group(1).replace("&amp;", "&")
    assert "flagged=true" in link
    response = site.client.get(link)
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    hostile = next(r for r in rows if r["accession_number"].startswith("'"))
    assert hostile["accession_number"] == "'=1+1"


def test_hostile_values_are_escaped_on_every_page(site: Site) -> None:
    site.sign_in("boss")
    study = _study_id(site, "hostile")
    for path in ["/", "/worklist/rows", f"/studies/{study}", "/history", "/audit", "/status"]:
        html = site.client.get(path).text
        assert "<script>alert(1)</script>" not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in site.client.get(f"/studies/{study}").text


def test_the_api_takes_bearer_tokens_and_describes_itself(site: Site) -> None:
    with site.sessions() as session:
        secret = add_token(session, "ris", "test")
        session.commit()
    headers = {"Authorization": f"Bearer {secret}"}
    studies = site.client.get("/api/studies?flagged=true", headers=headers).json()
    assert {s["study_instance_uid"] for s in studies} == {
        site.studies["high"],
        site.studies["hostile"],
    }
    one = site.client.get(f"/api/studies/{site.studies['high']}", headers=headers).json()
    assert one[0]["probability"] == pytest.approx(0.95)
    assert (
        site.client.get("/api/results", headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    spec = site.client.get("/api/openapi.json").json()
    assert {"/api/studies", "/api/results", "/api/feedback", "/api/worklist"} <= set(spec["paths"])
    assert site.client.get("/docs").status_code == 404


def test_try_it_classifies_a_jpeg_and_refuses_a_text_file(site: Site) -> None:
    site.sign_in()
    token = site.csrf("/try")
    image = fixture_images()[0]
    response = site.client.post(
        "/try",
        data={"csrf_token": token},
        files={"file": (image.name, image.read_bytes(), "image/jpeg")},
    )
    assert response.status_code == 200
    verdict = re.search(r'id="verdict">(.*?)</p>', response.text, re.S).group(1)
    assert re.search(
        r"(PNEUMONIA|NORMAL): score (above 0\.99|below 0\.01|0\.\d\d), flag at 0\.\d\d", verdict
    )
    assert "data:image/png;base64," in response.text
    text = site.client.post(
        "/try",
        data={"csrf_token": token},
        files={"file": ("notes.txt", b"just some words, no picture", "text/plain")},
    )
    assert text.status_code == 422
    assert "cannot be classified: neither a DICOM Part 10 file" in text.text
    screenshot = (ROOT / "docs" / "screenshots" / "worklist.png").read_bytes()
    picture = site.client.post(
        "/try",
        data={"csrf_token": token},
        files={"file": ("worklist.png", screenshot, "image/png")},
    )
    assert picture.status_code == 422
    assert "does not look like a frontal chest radiograph (score" in picture.text


def test_about_shows_the_loaded_models_layers_and_figures(site: Site) -> None:
    html = site.client.get("/about").text
    assert "cnn-lstm-ensemble" in html
    assert "Bidirectional" in html and "SeparableConv2D" in html
    assert "CC BY 4.0" in html
    assert re.search(r"ROC AUC</th><td>0\.9\d{3}", html)


def test_reports_are_listed_and_rendered_on_demand(site: Site) -> None:
    site.sign_in()
    folder = site.config.reports.directory
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "triage-20261121-0600-to-20261122-0600.html").write_text("<p>nightly</p>")
    listing = site.client.get("/reports").text
    assert "triage-20261121-0600-to-20261122-0600.html" in listing
    assert site.client.get("/reports/triage-20261121-0600-to-20261122-0600.html").text == (
        "<p>nightly</p>"
    )
    assert site.client.get("/reports/..%2Fweb.db").status_code == 404
    rendered = site.client.post(
        "/reports/render",
        data={
            "csrf_token": site.csrf("/reports"),
            "since": "2000-01-01T00:00",
            "until": "2100-01-01T00:00",
        },
    )
    assert rendered.status_code == 200
    assert "Beta, Bob" in rendered.text


def test_status_is_for_admins_and_health_follows_the_heartbeats(site: Site) -> None:
    site.sign_in()
    assert site.client.get("/status").status_code == 403
    unhealthy = site.client.get("/healthz")
    assert unhealthy.status_code == 503
    assert "no node process" in unhealthy.json()["problems"][0]
    with site.sessions() as session:
        beat(session, "node", {"port": 11112})
        beat(session, "worker", {"model": "cnn-lstm-ensemble v1"})
    assert site.client.get("/healthz").json() == {"status": "ok"}
    metrics = site.client.get("/metrics").text
    assert "pneumotriage_queue_depth 1.0" in metrics
    assert 'pneumotriage_processes_alive{component="worker"} 1.0' in metrics
    site.client.cookies.clear()
    site.sign_in("boss")
    status = site.client.get("/status").text
    assert "The database answers; 1 node process and 1 worker process report." in status
    assert 'aria-label="Warnings"' not in status
    assert "not a chest radiograph: modality CT" in status
    assert "11112" in status
    assert "Last drift check</th><td>none yet" in status
    assert "pneumotriage_drift_warning 0.0" in metrics

    with site.sessions() as session:
        now = utcnow()
        session.add(
            DriftCheck(
                checked_at=now,
                since=now,
                until=now,
                model_name="m",
                model_version="v",
                results=500,
                psi=0.9,
                ks=0.3,
                warned=True,
                summary="scores have moved: PSI 0.900",
            )
        )
        session.commit()
    status = site.client.get("/status").text
    assert '<span class="error">' in status and "scores have moved: PSI 0.900" in status
    # The page lists what `pneumotriage status` warns of, as it does.
    assert "<li>drift check: scores have moved: PSI 0.900</li>" in status
    assert "pneumotriage_drift_warning 1.0" in site.client.get("/metrics").text


def _cli(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(tmp_path / "storage"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml"), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_accounts_and_tokens_from_the_command_line_are_audited(tmp_path: Path) -> None:
    short = _cli(
        tmp_path, "user", "add", "lee", "--role", "radiologist", "--password-stdin", stdin="short\n"
    )
    assert short.returncode == 2
    assert short.stderr.strip().splitlines()[-1] == (
        "pneumotriage: the password must have at least 10 characters"
    )
    no_stdin = _cli(tmp_path, "user", "add", "lee", "--role", "admin")
    assert no_stdin.returncode == 2 and "--password-stdin" in no_stdin.stderr
    added = _cli(
        tmp_path, "user", "add", "lee", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    again = _cli(
        tmp_path, "user", "add", "lee", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert again.returncode == 2 and "pneumotriage: user lee already exists" in again.stderr
    users = json.loads(_cli(tmp_path, "user", "list", "--format", "json").stdout)
    assert [(u["username"], u["role"], u["disabled_at"]) for u in users] == [("lee", "admin", None)]
    token = _cli(tmp_path, "token", "add", "ris")
    assert token.returncode == 0 and token.stdout.startswith("pt_")
    assert _cli(tmp_path, "user", "disable", "lee").returncode == 0
    events = json.loads(_cli(tmp_path, "audit", "--format", "json").stdout)
    assert [e["action"] for e in events] == ["user_disabled", "token_added", "user_added"]
    assert PASSWORD not in json.dumps(events) and token.stdout.strip() not in json.dumps(events)


def test_disabling_an_account_ends_its_open_sessions(site: Site) -> None:
    site.sign_in()
    assert site.client.get("/", follow_redirects=False).status_code == 200
    with site.sessions() as session:
        disable_user(session, "rad", "test")
        session.commit()
    assert site.client.get("/", follow_redirects=False).status_code == 303
    assert site.sign_in().status_code == 401


def test_bodies_are_bounded_before_they_are_read(site: Site) -> None:
    big = {"username": "rad", "password": "x" * (100 * 1024)}
    assert site.client.post("/login", data=big).status_code == 413
    image = fixture_images()[0]
    anonymous = site.client.post("/try", files={"file": (image.name, image.read_bytes())})
    assert anonymous.status_code == 401


def test_a_picture_with_too_many_pixels_is_refused_in_one_line(site: Site) -> None:
    site.sign_in()
    buffer = io.BytesIO()
    Image.new("L", (15000, 15000)).save(buffer, "PNG")
    refused = site.client.post(
        "/try",
        data={"csrf_token": site.csrf("/try")},
        files={"file": ("bomb.png", buffer.getvalue(), "image/png")},
    )
    assert refused.status_code == 422
    assert "too many pixels" in refused.text


def test_a_report_opened_in_the_browser_keeps_its_own_policy(site: Site) -> None:
    site.sign_in()
    rendered = site.client.post(
        "/reports/render",
        data={"csrf_token": site.csrf("/reports"), "since": "2000-01-01", "until": "2100-01-01"},
    )
    policy = rendered.headers["content-security-policy"]
    assert "style-src 'sha256-" in policy and "script-src" not in policy
