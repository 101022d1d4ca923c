"""The study's result as a Comprehensive SR following TID 1500, built by highdicom.

One measurement group holds the study's finding (pneumonia present or absent as a coded
qualitative evaluation), its score and operating threshold, the algorithm (TID 4019) and
every source image; one group per image keeps the per-image scores. Patient and study
modules are copied from the source images by highdicom, so the SR lands in their study.
The images are referenced from the groups and the evidence, not from an image library: its
projection radiography entries need the Imager Pixel Spacing, which CR may leave out.
"""

from __future__ import annotations

from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from outputs.codes import (
    ABSENT,
    MANUFACTURER,
    NO_UNITS,
    PLAIN_CHEST_XRAY,
    PNEUMONIA,
    PRESENT,
    SCORE,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    THRESHOLD,
)
from outputs.outcome import ImageOutcome, StudyOutcome


def _group(
    outcome: StudyOutcome,
    identifier: str,
    images: tuple[ImageOutcome, ...],
    probability: float,
    flagged: bool,
) -> MeasurementsAndQualitativeEvaluations:
    algorithm = AlgorithmIdentification(
        name=outcome.model_name, version=outcome.model_version, manufacturer=MANUFACTURER
    )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=outcome.uid("sr", str(outcome.version), identifier), identifier=identifier
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        qualitative_evaluations=[
            QualitativeEvaluation(name=PNEUMONIA, value=PRESENT if flagged else ABSENT)
        ],
        measurements=[
            Measurement(name=SCORE, value=probability, unit=NO_UNITS, algorithm_id=algorithm),
            Measurement(
                name=THRESHOLD, value=outcome.threshold, unit=NO_UNITS, algorithm_id=algorithm
            ),
        ],
        source_images=[
            SourceImageForMeasurementGroup.from_source_image(image.source) for image in images
        ],
    )


def build_report(outcome: StudyOutcome) -> Dataset:
    sources = [image.source for image in outcome.images]
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=outcome.uid("device", outcome.model_name, outcome.model_version),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{outcome.model_name} {outcome.model_version}"[:64],
        ),
    )
    groups = [
        _group(outcome, "study", outcome.images, outcome.probability, outcome.flagged),
        *(
            _group(outcome, f"image {i}", (image,), image.probability, image.flagged)
            for i, image in enumerate(outcome.images, start=1)
        ),
    ]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
    )
    sr = ComprehensiveSR(
        evidence=sources,
        content=report[0],
        series_instance_uid=outcome.series_uid("sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=outcome.sop_uid("sr"),
        instance_number=outcome.version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
    )
    return sr
