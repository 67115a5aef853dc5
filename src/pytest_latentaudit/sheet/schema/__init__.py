"""JSON Schemas shipped with pytest-latentaudit.

* ``spec-sheet.schema.json``: the spec sheet (draft 2020-12).
* ``model_card.v0.0.2.schema.json``: the Model Card Toolkit schema v0.0.2, vendored
  unchanged from model-card-toolkit 2.0.0 (Apache License 2.0, the TensorFlow Authors);
  ``exports.to_model_card`` writes cards that validate against it.

``validate`` needs the optional ``jsonschema`` package and says so clearly when it is
missing; nothing here imports it at import time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

HERE = Path(__file__).parent
SPEC_SHEET_SCHEMA = HERE / "spec-sheet.schema.json"
MODEL_CARD_SCHEMA = HERE / "model_card.v0.0.2.schema.json"


class SchemaUnavailable(ImportError):
    """``jsonschema`` is not installed."""


class SheetValidationError(ValueError):
    """A document does not match its schema; ``errors`` lists ``path: message`` lines."""

    def __init__(self, what: str, errors: List[str]):
        self.errors = errors
        shown = errors[:10]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(f"{what} does not match its schema ({len(errors)} error(s)):\n  "
                         + "\n  ".join(shown) + more)


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_schema() -> dict:
    """The spec-sheet JSON Schema as a dict."""
    return _load(SPEC_SHEET_SCHEMA)


def load_model_card_schema() -> dict:
    """The vendored Model Card Toolkit v0.0.2 schema as a dict."""
    return _load(MODEL_CARD_SCHEMA)


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        raise SchemaUnavailable("validating against a JSON Schema needs the 'jsonschema' package: "
                                "pip install jsonschema (it is part of pytest-latentaudit[dev])") from None
    return jsonschema


def schema_errors(instance, schema: dict) -> List[str]:
    """Every violation of ``schema`` by ``instance`` as ``$.json.path: message`` lines."""
    js = _jsonschema()
    cls = js.validators.validator_for(schema)
    validator = cls(schema)
    out = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"{path}: {err.message}")
    return out


def validate(sheet) -> None:
    """Raise ``SheetValidationError`` unless ``sheet`` (a dict, or a ``SpecSheet``) is a valid
    spec sheet; ``SchemaUnavailable`` when ``jsonschema`` is not installed."""
    data = getattr(sheet, "data", sheet)
    errors = schema_errors(data, load_schema())
    if errors:
        raise SheetValidationError("spec sheet", errors)


def validate_model_card(card: dict) -> None:
    """Raise ``SheetValidationError`` unless ``card`` validates against MCT schema v0.0.2."""
    errors = schema_errors(card, load_model_card_schema())
    if errors:
        raise SheetValidationError("model card", errors)
