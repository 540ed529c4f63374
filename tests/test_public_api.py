"""The public API: every name in ``hf_spectral.__all__`` resolves, and importing the package is cheap."""

from __future__ import annotations

import subprocess
import sys

import hf_spectral


def test_every_public_name_resolves():
    for name in hf_spectral.__all__:
        assert getattr(hf_spectral, name) is not None, name
    assert hf_spectral.compare.__name__ == "compare"  # the function, not a submodule


def test_unknown_name_raises_attribute_error():
    try:
        hf_spectral.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_does_not_load_heavy_libraries():
    code = ("import sys, hf_spectral; heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'pandas') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
