"""The model flags ``segment.py`` and ``app.py`` share."""

from __future__ import annotations

import pytest
from absl import flags

from panet_jax.inference import model_flags


def _parse(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    model_flags.define(values)
    values(["prog", *argv])
    return values


def test_flags_become_the_predictors_keyword_arguments():
    values = _parse("--checkpoint=runs/x", "--image_size=321,337", "--step=7",
                    "--prototypes_per_class=3")  # fmt: skip
    assert values.checkpoint == "runs/x"
    assert model_flags.model_arguments(values) == {
        "image_size": (321, 337), "step": 7, "prototypes_per_class": 3,
    }  # fmt: skip
    defaults = model_flags.model_arguments(_parse("--checkpoint=runs/x"))
    assert defaults == {"image_size": None, "step": None, "prototypes_per_class": None}


def test_bad_model_flags_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"--image_size: expected integer \(height, width\)"):
        model_flags.model_arguments(_parse("--checkpoint=x", "--image_size=1,1"))
    with pytest.raises(flags.IllegalFlagValueError, match="prototypes_per_class"):
        _parse("--checkpoint=x", "--prototypes_per_class=0")
    with pytest.raises(flags.IllegalFlagValueError, match="checkpoint"):
        _parse()
