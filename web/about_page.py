"""About: the data the model learned from, its layers as loaded, its validation figures and
what it is for. The layers are read from the model this process serves, not written by
hand, so the page cannot describe another model than the one that answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from core.heatmap import ensemble_members
from web.deps import MaybeSession
from web.templates import page

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    shape: str
    parameters: int


def _shape(layer: Any) -> str:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return ""
    return " x ".join("n" if d is None else str(d) for d in shape)


def layers(keras_model: Any) -> list[Layer]:
    return [
        Layer(layer.name, type(layer).__name__, _shape(layer), int(layer.count_params()))
        for layer in keras_model.layers
    ]


@router.get("/about", response_class=HTMLResponse)
def about(request: Request, _current: MaybeSession) -> Response:
    model = request.app.state.model()
    members = ensemble_members(model.keras_model)
    return page(
        request,
        "about.html.j2",
        card=model.card,
        members=len(members),
        member_layers=layers(members[0]),
        parameters=int(model.keras_model.count_params()),
    )
