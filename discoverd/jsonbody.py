"""JSON request bodies into pydantic models, with refusals that say which field and why."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from discoverd.errors import Invalid

M = TypeVar("M", bound=BaseModel)


def parse(body: bytes, model: type[M], example: str) -> M:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[" * 60000
        raise Invalid(f"body must be JSON: {example}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Invalid(f"{where}: {first['msg']}", cause=where) from exc
