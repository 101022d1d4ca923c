"""The Jinja2 environment every page and report is rendered in: autoescaping on everything
(whatever a modality wrote into a name is shown, not run), undefined names are errors, and
values read the same wherever a radiologist sees them."""

from __future__ import annotations

from jinja2 import BaseLoader, Environment, StrictUndefined, select_autoescape

from core.scores import score_at
from core.texts import clock, duration, local_time, person_name


def environment(loader: BaseLoader) -> Environment:
    env = Environment(
        loader=loader,
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["score_at"] = score_at
    env.filters["local"] = local_time
    env.filters["clock"] = clock
    env.filters["duration"] = duration
    env.filters["person_name"] = person_name
    return env
