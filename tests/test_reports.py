"""Report content and order, rendered by Jinja2 from a real SQLite history."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from dicom_factory import fixture_images, grey_pixels, make_dataset
from sqlalchemy.orm import Session, sessionmaker

from core.config import load_config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.heatmap_render import map_png
from dicom_node.registration import InstanceMetadata, StoredFile, add_instance
from pneumotriage.service import _nightly_report, open_database
from reports.period import report_for_period
from reports.render import _person_name, build_context, render, report_filename
from worker.claims import Triage, claim, complete, reject
from worker.settle import settle_studies


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    upgrade(engine)
    return make_session_factory(engine)


def add(sessions: sessionmaker[Session], name: str, accession: str, study_uid: str) -> str:
    dataset = make_dataset(
        grey_pixels(fixture_images()[0]),
        patient_name=name,
        accession_number=accession,
        patient_id=f"ID-{accession}",
        study_uid=study_uid,
    )
    with sessions() as session:
        add_instance(
            session, InstanceMetadata.from_dataset(dataset), StoredFile("x.dcm", 1, "1.2", "M")
        )
        session.commit()
    return str(dataset.SOPInstanceUID)


def triage(probability: float) -> Triage:
    label = "PNEUMONIA" if probability >= 0.5 else "NORMAL"
    return Triage(probability, label, label == "PNEUMONIA", 0.5, "m", "v7", "", b"\x89PNG")


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Four studies: two flagged (0.7 and 0.95, the first with a second, weaker image),
    one not flagged, one rejected, and one instance still waiting."""
    uids = {
        "low-flag": add(sessions, "Alpha^Ann", "A1", "1.1"),
        "low-flag-2": add(sessions, "Alpha^Ann", "A1", "1.1"),
        "high-flag": add(sessions, "Beta^Bob", "B1", "1.2"),
        "normal": add(sessions, "Gamma^Gil", "C1", "1.3"),
        "ct": add(sessions, "Delta^Dee", "D1", "1.4"),
    }
    probabilities = {"low-flag": 0.7, "low-flag-2": 0.2, "high-flag": 0.95, "normal": 0.1}
    with sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 10, 300)}
        for key, probability in probabilities.items():
            complete(session, works[uids[key]], "w", triage(probability))
        reject(session, works[uids["ct"]], "w", "not a chest radiograph: modality CT")
        session.commit()
    add(sessions, "Epsilon^Eve", "E1", "1.5")
    return sessions


def test_flagged_studies_come_first_by_probability_with_counts(
    history: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    with history() as session:
        context = build_context(session, now - timedelta(hours=1), now + timedelta(minutes=1), None)
    assert [g.accession_number for g in context.flagged] == ["B1", "A1"]
    assert [g.probability for g in context.flagged] == [0.95, 0.7]
    assert len(context.flagged[1].images) == 2 and context.flagged[1].flagged
    assert [g.accession_number for g in context.not_flagged] == ["C1"]
    assert [r.accession_number for r in context.rejected] == ["D1"]
    assert context.counts == {
        "received": 6,
        "triaged": 4,
        "flagged": 2,
        "rejected": 1,
        "studies": 5,
        "flagged_studies": 2,
        "identity_conflicts": 0,
    }
    assert context.pending == 1
    assert context.rejection_reasons == [("not a chest radiograph: modality CT", 1)]
    assert context.models == [("m", "v7")]


def test_report_file_is_self_contained_and_named_by_period_only(
    history: sessionmaker[Session], tmp_path: Path
) -> None:
    until = datetime.now(UTC) + timedelta(minutes=1)
    path = report_for_period(history, until - timedelta(hours=24), until, tmp_path, None)
    html = path.read_text(encoding="utf-8")
    assert re.fullmatch(r"triage-\d{8}-\d{4}-to-\d{8}-\d{4}\.html", path.name)
    assert path.name == report_filename(until - timedelta(hours=24), until)
    assert html.index("Beta, Bob") < html.index("Alpha, Ann") < html.index("Gamma, Gil")
    assert html.index("Gamma, Gil") < html.index("Delta, Dee")
    assert "Decision support, not a diagnosis" in html and "m v7" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html


def test_empty_period_still_names_the_model_and_says_nothing_was_flagged(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from core.model_store import ModelCard

    card = ModelCard(
        name="cnn-lstm-ensemble",
        version="v1",
        architecture="cnn-lstm",
        input_size=150,
        threshold=0.7,
    )
    until = datetime.now(UTC)
    path = report_for_period(sessions, until - timedelta(hours=24), until, tmp_path, card)
    html = path.read_text(encoding="utf-8")
    assert "No study was flagged in this period." in html and "cnn-lstm-ensemble v1" in html


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("Garcia^Maria", "Garcia, Maria"),
        ("Doe^John^Q^Dr^Jr", "Doe, Dr John Q Jr"),
        ("Anonymous", "Anonymous"),
        ("^Maria", "Maria"),
        ("Yamada^Tarou=山田^太郎", "Yamada, Tarou"),
        ("", ""),
    ],
)
def test_person_names_read_as_written(stored: str, shown: str) -> None:
    assert _person_name(stored) == shown


def test_a_nightly_report_that_cannot_be_written_is_one_logged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "reports"
    blocked.write_text("a file where the reports folder should be")
    config = load_config(
        ROOT / "config.toml",
        environ={
            "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}",
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(blocked),
        },
    )
    database = open_database(config, migrate=True)
    _nightly_report(config, database)
    database.engine.dispose()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "nightly report not written" in record.getMessage() and record.exc_info is None
    assert list(tmp_path.glob("**/*.part")) == []


def test_studies_show_their_study_result_once_settled(
    history: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    window = (now - timedelta(hours=1), now + timedelta(minutes=1))
    with history() as session:
        before = build_context(session, *window, None)
    assert not any(group.settled for group in before.flagged)
    assert "provisional: more images may come" in render(before)
    with history() as session:
        settle_studies(session, 0, "max")
        after = build_context(session, *window, None)
    assert all(group.settled for group in after.flagged + after.not_flagged)
    assert [g.probability for g in after.flagged] == [0.95, 0.7]
    assert "provisional" not in render(after)


def test_flagged_studies_show_their_heatmaps_with_the_caveat(
    sessions: sessionmaker[Session],
) -> None:
    flagged = add(sessions, "Heat^Hal", "H1", "1.9")
    add(sessions, "Cool^Cy", "H2", "2.9")  # not flagged: its map is not shown
    picture = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    heat = np.zeros((150, 150), np.float32)
    heat[40:80, 60:100] = 1.0
    with sessions() as session:
        for work in claim(session, "w", 10, 300):
            hot = work.sop_instance_uid == flagged
            complete(
                session,
                work,
                "w",
                Triage(
                    0.9 if hot else 0.1,
                    "X",
                    hot,
                    0.5,
                    "m",
                    "v7",
                    "",
                    map_png(picture),
                    map_png(heat),
                ),
            )
        session.commit()
        now = datetime.now(UTC)
        html = render(
            build_context(session, now - timedelta(hours=1), now + timedelta(minutes=1), None)
        )
    assert html.count('class="heatmap"') == 1
    assert "Visual aid, not a localisation" in html
