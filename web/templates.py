"""The pages' Jinja2 environment: autoescaping on everything, the report's filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from core.heatmap_render import CAPTION
from core.scores import score_at
from core.texts import DISCLAIMER, clock, duration, local_time, person_name

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["score_at"] = score_at
    env.filters["local"] = local_time
    env.filters["person_name"] = person_name
    env.filters["duration"] = duration
    env.filters["clock"] = clock
    env.globals["heatmap_caption"] = CAPTION
    return env


templates = Jinja2Templates(env=_environment())


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Every page gets who is signed in (for the menu and the CSRF field of its forms)."""
    current = getattr(request.state, "web_session", None)
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": current.user if current is not None else None,
            "csrf_token": current.csrf_token if current is not None else "",
            "disclaimer": DISCLAIMER,
            **context,
        },
        status_code=status_code,
    )
