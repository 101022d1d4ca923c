"""What an administrator runs by hand or from monitoring: `status` as a check with exit
0/1/2, retention with `purge --dry-run`, `--version`, `history --columns`, JSON log lines.

Each command runs as a process on a real SQLite database, as the administrator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, Service
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.schema import AuditEvent, Heartbeat, Instance, Result, StudyResult
from core.db.types import utcnow
from core.heartbeat import beat, stop
from core.lifecycle import Triage, claim, complete, enqueue, reject
from core.registration import InstanceMetadata, StoredFile

TRIAGE = Triage(0.2, "NORMAL", False, 0.5, "m", "v1", "", b"png")


class Site:
    def __init__(self, tmp_path: Path) -> None:
        self.storage = tmp_path / "storage"
        self.url = f"sqlite:///{tmp_path / 'ops.db'}"
        engine = make_engine(self.url)
        upgrade(engine)
        self.sessions: sessionmaker[Session] = make_session_factory(engine)
        self.env = {
            "PNEUMOTRIAGE_DATABASE_URL": self.url,
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(self.storage),
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(tmp_path / "reports"),
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOTRIAGE_")}
        return subprocess.run(
            [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml"), *args],
            env={**environment, "PYTHONPATH": str(ROOT), **self.env, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def receive(self, days_ago: float = 0, image: int = 0, **fields: object) -> str:
        dataset = make_dataset(grey_pixels(fixture_images()[image]), **fields)
        relative = f"{dataset.StudyInstanceUID}/{dataset.SOPInstanceUID}.dcm"
        write(dataset, self.storage / dataset.StudyInstanceUID, f"{dataset.SOPInstanceUID}.dcm")
        with self.sessions() as session:
            instance = enqueue(
                session,
                InstanceMetadata.from_dataset(dataset),
                StoredFile(relative, 1000, str(dataset.file_meta.TransferSyntaxUID), "MOD"),
            )
            instance.received_at = utcnow() - timedelta(days=days_ago)
            session.commit()
        return str(dataset.SOPInstanceUID)

    def file_of(self, uid: str) -> Path:
        with self.sessions() as session:
            instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid))
            return self.storage / instance.one().file_path


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pneumotriage", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip().startswith("pneumotriage 0.")


def test_status_is_critical_without_processes_ok_with_them_and_warns_on_old_work(
    site: Site,
) -> None:
    down = site.run("status")
    assert down.returncode == 2, down.stderr
    assert "CRITICAL" in down.stdout and "no node process" in down.stdout

    with site.sessions() as session:
        beat(session, "node", {"port": 11112})
        beat(session, "worker", {"model": "m v1"})
    healthy = site.run("status", "--format", "json")
    assert healthy.returncode == 0, healthy.stdout
    state = json.loads(healthy.stdout)
    assert state["status"] == "OK" and state["queue_depth"] == 0 and state["free_mb"] > 0
    # A monitoring check mails whatever it prints: nothing but its verdict.
    assert healthy.stderr == ""

    site.receive(days_ago=1)
    waiting = site.run("status")
    assert waiting.returncode == 1
    assert "WARNING" in waiting.stdout and "waited 1 d 0 h for triage" in waiting.stdout
    assert "1 waiting" in waiting.stdout

    full = site.run("status", PNEUMOTRIAGE_STORAGE_MIN_FREE_MB=str(1 << 40))
    assert full.returncode == 2 and "below storage.min_free_mb" in full.stdout


def test_status_warns_of_a_process_that_stopped_without_a_clean_stop(site: Site) -> None:
    """Two workers, one of them killed: a worker still reports, so nothing is critical, but
    the dead one's row (a clean stop removes it) is a warning for a day, not for ever."""
    with site.sessions() as session:
        beat(session, "node", {"port": 11112})
        beat(session, "worker", {"model": "m v1"})
        for process, minutes in (("worker@host:101", 3), ("worker@host:99", 2 * 24 * 60)):
            seen = utcnow() - timedelta(minutes=minutes)
            session.add(
                Heartbeat(
                    process=process, component="worker", started_at=seen, seen_at=seen, detail="{}"
                )
            )
        session.commit()
    result = site.run("status", "--format", "json")
    assert result.returncode == 1, result.stdout
    assert json.loads(result.stdout)["warnings"] == [
        "1 worker process(es) stopped without a clean stop in the last 24 h"
        " (latest worker@host:101, last seen 3 min ago)"
    ]

    with site.sessions() as session:
        stop(session, "worker")
        session.execute(delete(Heartbeat).where(Heartbeat.process == "worker@host:101"))
        session.commit()
        beat(session, "worker", {"model": "m v1"})
    assert site.run("status").returncode == 0


def _settle(site: Site, triaged: list[str], rejected: list[str], published: bool) -> None:
    with site.sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 10, 300)}
        for uid in triaged:
            complete(session, works[uid], "w", TRIAGE)
        for uid in rejected:
            reject(session, works[uid], "w", "not a chest radiograph: modality CT")
        session.commit()
    from worker.settle import settle_studies

    with site.sessions() as session:
        settle_studies(session, 0, "max")
        if published:
            session.execute(update(StudyResult).values(published_at=utcnow()))
        session.commit()


def test_purge_removes_only_old_settled_published_files_and_keeps_results(site: Site) -> None:
    old_done = site.receive(days_ago=40, study_uid="1.2.3.1")
    old_rejected = site.receive(days_ago=40, study_uid="1.2.3.2")
    recent = site.receive(days_ago=1, study_uid="1.2.3.3")
    _settle(site, [old_done, recent], [old_rejected], published=True)
    old_waiting = site.receive(days_ago=40, study_uid="1.2.3.4")

    kept_for_ever = site.run("purge")
    assert kept_for_ever.returncode == 0 and "kept for ever" in kept_for_ever.stderr

    keep = {"PNEUMOTRIAGE_STORAGE_KEEP_DAYS": "30"}
    dry = site.run("purge", "--dry-run", **keep)
    assert dry.returncode == 0, dry.stderr
    listed = {line.split("\t")[0] for line in dry.stdout.splitlines()}
    assert listed == {old_done, old_rejected}
    assert "would remove 2 received file(s)" in dry.stderr
    assert all(site.file_of(uid).exists() for uid in (old_done, old_rejected))

    done = site.run("purge", **keep)
    assert done.returncode == 0 and "removed 2 received file(s)" in done.stderr
    assert not site.file_of(old_done).exists() and not site.file_of(old_rejected).exists()
    assert site.file_of(recent).exists() and site.file_of(old_waiting).exists()
    with site.sessions() as session:
        purged = session.scalars(select(Instance).where(Instance.purged_at.is_not(None))).all()
        assert {i.sop_instance_uid for i in purged} == {old_done, old_rejected}
        assert all(i.status in ("triaged", "rejected") for i in purged)
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "retention_purge"))
        assert json.loads(event.detail)["files"] == 2
    again = site.run("purge", "--dry-run", **keep)
    assert again.stdout == "" and "would remove 0" in again.stderr


def test_an_unpublished_study_result_keeps_its_files(site: Site) -> None:
    old = site.receive(days_ago=40)
    _settle(site, [old], [], published=False)
    dry = site.run("purge", "--dry-run", PNEUMOTRIAGE_STORAGE_KEEP_DAYS="30")
    assert dry.stdout == "" and "would remove 0" in dry.stderr


def test_history_columns_are_chosen_and_checked(site: Site) -> None:
    site.receive(accession_number="ACC-COLS")
    chosen = site.run("history", "--columns", "accession_number,status", "--format", "csv")
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.splitlines() == ["accession_number,status", "ACC-COLS,pending"]
    wrong = site.run("history", "--columns", "accession_number,colour")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    (line,) = wrong.stderr.strip().splitlines()
    assert "no column colour" in line and "accession_number" in line


def test_json_log_lines_and_no_patient_name(site: Site) -> None:
    site.receive(patient_name="Quux^Quentin")
    result = site.run("history", PNEUMOTRIAGE_LOGGING_FORMAT="json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and {"time", "level", "logger", "message"} <= set(lines[0])
    assert lines[0]["message"].startswith("pneumotriage 0.")
    assert "Quux" not in result.stderr


def test_a_node_short_of_space_refuses_stores_with_a_comment(tmp_path: Path) -> None:
    """storescu, as a modality, is told out of resources and why; nothing is kept."""
    node = Service(tmp_path, command="node", storage_min_free_mb=str(1 << 40)).start()
    try:
        path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "out")
        refused = node.store(path, options=["-d"])
        assert "0xa700: Refused: Out of resources" in refused.stderr, refused.stderr
        assert "storage nearly full, send again later" in refused.stderr
        assert node.sql("SELECT id FROM instances") == []
        assert "below storage.min_free_mb" in node.log()
    finally:
        node.stop()


def test_network_failures_log_without_tracebacks_other_errors_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging
    import ssl

    from core.logs import configure

    configure("INFO")
    log = logging.getLogger("pynetdicom.dul")
    for error in (TimeoutError("timed out"), ssl.SSLError("wrong version number")):
        try:
            raise error
        except OSError as exc:
            log.exception(exc)
    assert "Traceback" not in capsys.readouterr().err
    try:
        raise ValueError("a bug")
    except ValueError as exc:
        log.exception(exc)
    assert "Traceback" in capsys.readouterr().err
    logging.getLogger().handlers.clear()


def test_a_study_that_cannot_be_published_does_not_hold_up_the_others(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Its image file is gone (not by retention): the publisher logs it and goes on."""
    from core.config import load_config
    from outputs.publish import Publisher

    broken = site.receive(study_uid="1.2.3.10")
    fine = site.receive(study_uid="1.2.3.11")
    _settle(site, [broken, fine], [], published=False)
    site.file_of(broken).unlink()
    config = load_config(
        ROOT / "config.toml",
        environ={
            **site.env,
            "PNEUMOTRIAGE_FORWARD_DESTINATIONS": '[{"ae_title":"PACS","host":"127.0.0.1",'
            '"port":4242,"send":["sr"]}]',
        },
    )
    assert Publisher(config, site.sessions).run_once() == 1
    with site.sessions() as session:
        published = dict(
            session.execute(select(StudyResult.study_fk, StudyResult.published_at)).all()
        )
    assert sorted(v is not None for v in published.values()) == [False, True]
    assert any("not published" in r.getMessage() for r in caplog.records)


def test_a_site_threshold_is_recorded_used_by_the_worker_and_shown(site: Site) -> None:
    from core.config import load_config
    from core.model_store import load_model
    from reports.render import build_context, render
    from worker.pipeline import TriageWorker

    assert "the model card's" in site.run("threshold", "show").stdout
    wrong = site.run("threshold", "set", "1.5", "--reason", "x")
    assert wrong.returncode == 2 and "between 0 and 1" in wrong.stderr
    assert site.run("threshold", "set", "0.3").returncode == 2  # --reason is required
    done = site.run("threshold", "set", "0.95", "--reason", "local validation, 200 studies")
    assert done.returncode == 0, done.stderr
    assert "0.950, set for this site by cli:" in done.stdout
    assert "local validation, 200 studies" in done.stdout
    with site.sessions() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "threshold_set"))
        assert json.loads(event.detail)["value"] == 0.95

    # Scored about 0.8 by the shipped model: flagged at the card's 0.73, not at this site's 0.95.
    moderate = next(
        i for i, p in enumerate(fixture_images()) if p.name == "person1002_bacteria_2933.jpeg"
    )
    uid = site.receive(image=moderate)
    config = load_config(ROOT / "config.toml", environ=site.env)
    model = load_model(config.model.directory, config.model.name)
    worker = TriageWorker(config, site.sessions, model)
    assert worker.run_once() == 1
    with site.sessions() as session:
        result = session.scalars(
            select(Result).join(Instance).where(Instance.sop_instance_uid == uid)
        ).one()
        assert result.threshold == 0.95 and not result.flagged
        assert model.card.threshold < result.probability < 0.95
        now = utcnow()
        html = render(build_context(session, now - timedelta(hours=1), now, model.card))
    assert "Operating threshold now: 0.950, set for this site by cli:" in html

    cleared = site.run("threshold", "clear", "--reason", "new model version")
    assert cleared.returncode == 0 and "the model card's" in cleared.stdout
    history = site.run("threshold", "show").stdout
    assert "local validation, 200 studies" in history and "new model version" in history


def test_validate_reports_figures_with_intervals_on_labelled_studies(
    site: Site, tmp_path: Path
) -> None:
    """Eight studies with known truth, scored as the worklist showed them; the figures are
    checked against a hand count, and a UID without a result is named, not dropped."""
    scores = [0.95, 0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.05]
    truths = [1, 1, 1, 1, 0, 0, 0, 0]
    uids = [site.receive(study_uid=f"1.2.3.{20 + i}") for i in range(len(scores))]
    with site.sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 20, 300)}
        for uid, score in zip(uids, scores, strict=True):
            flagged = score >= 0.5
            triage = Triage(
                score, "PNEUMONIA" if flagged else "NORMAL", flagged, 0.5, "m", "v", "", b""
            )
            complete(session, works[uid], "w", triage)
        session.commit()
    from worker.settle import settle_studies

    with site.sessions() as session:
        settle_studies(session, 0, "max")
        session.commit()
    labels = tmp_path / "labels.csv"
    rows = [f"1.2.3.{20 + i},{'pneumonia' if t else 'normal'}" for i, t in enumerate(truths)]
    labels.write_text("uid,truth\n" + "\n".join([*rows, "9.9.9,normal"]) + "\n")
    result = site.run("validate", "--labels", str(labels), "--format", "json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    # At the card's threshold (0.734): TP 3 (0.95, 0.9, 0.8), FN 1, TN 4, FP 0.
    assert figures["n"] == 8 and figures["confusion_matrix"] == [[4, 0], [1, 3]]
    assert figures["sensitivity"]["value"] == 0.75
    low, high = figures["sensitivity"]["ci95"]
    assert 0.2 < low < 0.75 < high <= 1
    assert figures["auc"]["value"] == pytest.approx(15 / 16)
    assert 0.2 < figures["threshold_for_target"] < 0.3  # reaching 0.97: all four
    assert "9.9.9: no result on file, left out" in result.stderr

    table = site.run("validate", "--labels", str(labels), "--out", str(tmp_path / "plots"))
    assert "95% CI" in table.stdout and "threshold set" in table.stdout
    assert (tmp_path / "plots" / "roc_curve.png").is_file()
    none = site.run("validate", "--readings")
    assert none.returncode == 2 and "need both pneumonia and normal" in none.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,truth\n1.2.3.20,maybe\n")
    wrong = site.run("validate", "--labels", str(bad))
    assert (
        wrong.returncode == 2 and "line 2: truth 'maybe' is not pneumonia or normal" in wrong.stderr
    )


def test_the_drift_check_judges_the_week_records_it_and_warns_in_status(site: Site) -> None:
    """A week of scores drawn like the shipped model's validation scores, at this site's own
    (lower) pneumonia share, passes; a week of hedging scores warns, in `drift` and `status`."""
    from core.config import load_config
    from core.model_store import model_dir, read_card

    config = load_config(ROOT / "config.toml", environ=site.env)
    card = read_card(model_dir(config.model.directory, config.model.name))
    counts = card.calibration["validation_scores"]
    rng = np.random.default_rng(11)

    def draw(name: str, n: int) -> np.ndarray:
        shares = np.asarray(counts[name], float) / sum(counts[name])
        bins = rng.choice(len(shares), n, p=shares)
        return (bins + rng.random(n)) / len(shares)

    def week(scores: np.ndarray) -> None:
        uids = [site.receive(study_uid=f"1.2.4.{rng.integers(1 << 30)}") for _ in scores]
        with site.sessions() as session:
            works = {w.sop_instance_uid: w for w in claim(session, "w", len(uids), 300)}
            for uid, score in zip(uids, scores, strict=True):
                flagged = bool(score >= card.threshold)
                label = "PNEUMONIA" if flagged else "NORMAL"
                triage = Triage(
                    float(score), label, flagged, card.threshold, card.name, card.version, "", b""
                )
                complete(session, works[uid], "w", triage)
            session.commit()

    few = site.run("drift")
    assert few.returncode == 0 and "not judged: 0 results in 7 days" in few.stdout

    week(np.concatenate([draw("PNEUMONIA", 90), draw("NORMAL", 210)]))
    calm = site.run("drift")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert calm.stdout.startswith("scores as validated: PSI 0.")
    assert "estimated pneumonia share" in calm.stdout

    with site.sessions() as session:
        session.execute(update(Result).values(created_at=utcnow() - timedelta(days=8)))
        session.commit()
    week(rng.beta(5, 5, 300))
    moved = site.run("drift")
    assert moved.returncode == 1 and moved.stdout.startswith("scores have moved: PSI ")
    with site.sessions() as session:
        beat(session, "node", {"port": 11112})
        beat(session, "worker", {"model": "m v1"})
    status = site.run("status")
    assert status.returncode == 1 and "drift check: scores have moved" in status.stdout
    as_json = json.loads(site.run("status", "--format", "json").stdout)
    assert as_json["drift"]["warned"] is True
    assert as_json["drift"]["summary"].startswith("scores have moved")

    from reports.render import build_context, render

    with site.sessions() as session:
        now = utcnow()
        html = render(build_context(session, now - timedelta(hours=1), now, card))
    assert "Last weekly drift check, " in html and "scores have moved: PSI" in html
