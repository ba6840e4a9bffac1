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


def test_shown_escapes_control_and_format_characters_only():
    from hiend_data.errors import markup, shown

    assert shown("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert shown("x\ny\rz\x7f\x85") == "x\\x0ay\\x0dz\\x7f\\x85"
    assert shown("evil\u202etxt.exe") == "evil\\u202etxt.exe"  # a bidi override, shown not obeyed
    assert shown("Leber–Läsion 肝\u3000x") == "Leber–Läsion 肝\u3000x"  # text stays text
    assert markup("[/bold] a[@click=(]b") == "\\[/bold] a\\[@click=(]b"


def test_cli_errors_prints_a_hostile_name_escaped(capsys):
    import typer

    from hiend_data.errors import InputError, cli_errors

    try:
        with cli_errors():
            raise InputError("case\x1b]0;pwned\x07.nii.gz: not a volume")
    except typer.Exit as exc:
        assert exc.exit_code == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err == "error: case\\x1b]0;pwned\\x07.nii.gz: not a volume\n"
