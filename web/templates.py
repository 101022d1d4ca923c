"""The pages' Jinja2 environment: autoescaping on everything, the report's filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from core.heatmap_render import CAPTION
from core.templating import environment
from core.texts import DISCLAIMER

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _environment() -> Environment:
    env = environment(FileSystemLoader(TEMPLATES))
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
