"""The shared bad-input helpers: one line, names the field, lists known fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hiend_data.errors import InputError, from_validation_error
from hiend_data.plan import Plan


def test_input_error_is_one_line() -> None:
    assert str(InputError("a.nii.gz:\n  truncated\tfile")) == "a.nii.gz: truncated file"


def test_validation_error_becomes_one_line_naming_fields() -> None:
    with pytest.raises(ValidationError) as info:
        Plan(spacing=(1.5, 1.5), modality="pet", colour="red")
    err = from_validation_error(info.value, "plan.json", Plan.model_fields)
    text = str(err)
    assert "\n" not in text and text.startswith("plan.json: ")
    assert "spacing.2: Field required" in text and "modality: Input should be" in text
    assert (
        "colour: unknown field (known: cache_dtype, crop_size, crop_to_foreground, modality, orientation, spacing, window)"
        in text
    )
