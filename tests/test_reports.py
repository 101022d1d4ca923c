"""Report content and order, rendered by Jinja2 from a real SQLite history."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import fields
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT
from dicom_factory import fixture_images, grey_pixels, make_dataset
from sqlalchemy.orm import Session, sessionmaker

import core
from core.config import load_config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.heatmap_render import map_png
from core.history import HistoryRow
from core.lifecycle import Triage, claim, complete, enqueue, reject
from core.registration import InstanceMetadata, StoredFile
from core.texts import duration, local_time, person_name
from pneumotriage.service import _nightly_report, open_database
from reports.period import report_for_period
from reports.render import ReportContext, build_context, render, report_filename
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
        enqueue(session, InstanceMetadata.from_dataset(dataset), StoredFile("x.dcm", 1, "1.2", "M"))
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
    assert person_name(stored) == shown


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


def context_of(sessions: sessionmaker[Session]) -> ReportContext:
    now = datetime.now(UTC)
    with sessions() as session:
        return build_context(session, now - timedelta(hours=1), now + timedelta(minutes=1), None)


def visible_text(html: str) -> str:
    """What a reader sees: the body without its tags and attributes, spaces collapsed."""
    body = html.split("<body>", 1)[1]
    return " ".join(re.sub(r"<[^>]*>", " ", body).split())


def style_of(html: str) -> str:
    (css,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    return css


def css_block(css: str, opening: str) -> str:
    """The body of the block that starts with `opening`, nested blocks included."""
    start = css.index(opening) + len(opening)
    depth = 1
    for index in range(start, len(css)):
        depth += {"{": 1, "}": -1}.get(css[index], 0)
        if depth == 0:
            return css[start:index]
    raise AssertionError(f"{opening!r} is not closed")


def test_every_score_reads_with_its_threshold_as_visible_text(
    history: sessionmaker[Session],
) -> None:
    text = visible_text(render(context_of(history)))
    # Studies, then each image beside its thumbnail, the weaker second image included.
    for score in ("0.95", "0.70", "0.20", "0.10"):
        assert f"score {score}, flag at 0.50" in text
    assert text.count("score 0.70, flag at 0.50") == 2  # Alpha's study and its first image
    assert not re.search(r"\d\s*%", text)


def test_scores_that_round_to_a_certainty_say_so_everywhere(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, "Sure^Sam", "S1", "3.1")
    add(sessions, "Clear^Cat", "S2", "3.2")
    with sessions() as session:
        works = claim(session, "w", 10, 300)
        for work, probability in zip(works, (0.9999, 0.0001), strict=True):
            complete(session, work, "w", triage(probability))
        session.commit()
    html = render(context_of(sessions))
    text = visible_text(html)
    assert "score above 0.99, flag at 0.50" in text and "score below 0.01, flag at 0.50" in text
    body = html.split("<body>", 1)[1]
    assert not re.search(r"\b(1\.00|0\.00)\b|%", body)  # nor in an alt text


def test_flagged_studies_read_as_flagged_without_colour(history: sessionmaker[Session]) -> None:
    html = render(context_of(history))
    assert html.count(">FLAGGED<") == 2
    print_block = css_block(style_of(html), "@media print {")
    assert "break-inside: avoid" in print_block and "border-left: 3pt solid #000" in print_block
    backgrounds = re.findall(r"background(?:-color)?:\s*([^;}]+)", print_block)
    assert backgrounds and all(value.strip() == "none" for value in backgrounds)
    # The statement opens and closes the report, on screen and on paper.
    assert html.count('<p class="disclaimer">Decision support, not a diagnosis.') == 2
    rules = re.findall(r"([^{}]*)\{([^}]*)\}", print_block)
    on_paper = [rule for selector, rule in rules if ".disclaimer" in selector]
    assert on_paper and all("display: none" not in rule for rule in on_paper)


def test_the_shared_stylesheet_is_inlined_and_allowed_by_its_hash_alone(
    history: sessionmaker[Session],
) -> None:
    shared = (Path(core.__file__).parent / "static" / "pneumotriage.css").read_text("utf-8")
    html = render(context_of(history))
    assert style_of(html) == shared
    for name in (".flag", ".badge", ".score"):
        assert name in shared
    digest = base64.b64encode(hashlib.sha256(shared.encode()).digest()).decode()
    (policy,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert f"style-src 'sha256-{digest}';" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "<link" not in html and " style=" not in html  # the hash allows no style attribute


def test_images_awaiting_triage_are_listed_with_how_long_they_have_waited(
    history: sessionmaker[Session],
) -> None:
    context = context_of(history)
    (waiting,) = context.awaiting
    assert (waiting.accession_number, waiting.status) == ("E1", "pending")
    section = visible_text(render(context)).split("Awaiting triage (1)", 1)[1]
    section = section.split("Not flagged (", 1)[0]
    assert "Epsilon, Eve" in section and "ID ID-E1" in section and "E1" in section
    assert local_time(waiting.received_at) in section and "under 1 min" in section
    assert "queued" in section
    with history() as session:
        claim(session, "w", 10, 300)
        session.commit()
    (claimed,) = context_of(history).awaiting
    assert claimed.status == "processing"
    assert "being triaged" in visible_text(render(context_of(history)))


@pytest.mark.parametrize(
    ("span", "shown"),
    [
        (timedelta(seconds=-30), "under 1 min"),
        (timedelta(seconds=59), "under 1 min"),
        (timedelta(minutes=12, seconds=40), "12 min"),
        (timedelta(hours=2, minutes=5), "2 h 05 min"),
        (timedelta(days=3, hours=4, minutes=59), "3 d 4 h"),
    ],
)
def test_waiting_times_read_in_minutes_hours_and_days(span: timedelta, shown: str) -> None:
    assert duration(span) == shown


def test_studies_and_images_show_when_they_were_received(history: sessionmaker[Session]) -> None:
    context = context_of(history)
    text = visible_text(render(context))
    for study in context.flagged + context.not_flagged:
        assert f"first image received {local_time(study.received_at)}" in text
        for image in study.triaged:
            assert f"received {local_time(image.received_at)}" in text
    for row in context.rejected:
        assert local_time(row.received_at) in text


def without_study_time(row: HistoryRow, **changes: object) -> SimpleNamespace:
    """The row as HistoryRow read before it gained `study_time`, plus `changes`."""
    values = {f.name: getattr(row, f.name) for f in fields(row) if f.name != "study_time"}
    return SimpleNamespace(**values, **changes)


@pytest.mark.parametrize(
    ("changes", "shown"),
    [({}, ""), ({"study_time": None}, ""), ({"study_time": time(14, 2, 31)}, " 14:02")],
)
def test_the_study_time_is_shown_when_the_history_has_one(
    history: sessionmaker[Session], changes: dict[str, object], shown: str
) -> None:
    context = context_of(history)
    for study in context.flagged + context.not_flagged:
        study.images = [without_study_time(row, **changes) for row in study.images]
    for rows in (context.awaiting, context.rejected):
        rows[:] = [without_study_time(row, **changes) for row in rows]
    text = visible_text(render(context))
    # Three studies, the waiting image and the rejected one.
    assert len(re.findall(r"2026-11-21(?! \d\d:\d\d)", text)) == (0 if shown else 5)
    assert text.count(f"2026-11-21{shown}") == 5


def test_what_a_waiting_image_carries_is_shown_not_run(sessions: sessionmaker[Session]) -> None:
    add(sessions, "<script>alert(1)</script>", "<b>X</b>", "4.1")
    html = render(context_of(sessions))
    assert "<script>" not in html and "<b>X</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;X&lt;/b&gt;" in html
