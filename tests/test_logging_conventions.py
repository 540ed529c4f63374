"""HF conventions: progress bars honour TQDM_DISABLE / HF_HUB_DISABLE_PROGRESS_BARS / disable_progress_bars and
stay off when stderr is not a terminal; set_verbosity_*; analyze() takes token/cache_dir like from_pretrained."""

from __future__ import annotations

import io
import logging as std_logging

import pytest

import hf_spectral
from hf_spectral.utils import logging
from tiny_models import fake_hub_cache, save_tiny


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def bar_output(**kwargs) -> str:
    stream = FakeTerminal()
    for _ in logging.tqdm(range(3), file=stream, desc="SVD", mininterval=0, **kwargs):
        pass
    return stream.getvalue()


@pytest.fixture(autouse=True)
def _bars_enabled(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    import huggingface_hub.utils as hub_utils

    hub_utils.enable_progress_bars()
    logging.enable_progress_bars()
    yield
    logging.enable_progress_bars()


def test_progress_bar_shown_on_a_terminal_only():
    assert "SVD" in bar_output() and "\r" in bar_output()
    plain = io.StringIO()  # a log file: not a TTY
    for _ in logging.tqdm(range(3), file=plain, desc="SVD", mininterval=0):
        pass
    assert plain.getvalue() == ""


@pytest.mark.parametrize("variable", ["TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"])
def test_progress_bar_environment_variables(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    assert logging.are_progress_bars_disabled()
    assert bar_output() == ""


def test_disable_and_enable_progress_bars():
    logging.disable_progress_bars()
    assert bar_output() == "" and logging.are_progress_bars_disabled()
    logging.enable_progress_bars()
    assert "SVD" in bar_output()
    import huggingface_hub.utils as hub_utils

    hub_utils.disable_progress_bars()  # the Hub's own switch, as transformers honours it
    try:
        assert bar_output() == ""
    finally:
        hub_utils.enable_progress_bars()


def test_analyze_progress_bar_honours_tqdm_disable(tmp_path, monkeypatch, capfd):
    save_tiny("gpt2", tmp_path / "model")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    hf_spectral.analyze(str(tmp_path / "model"))
    assert "SVD" not in capfd.readouterr().err


def test_set_verbosity():
    before = logging.get_verbosity()
    try:
        logging.set_verbosity_error()
        assert not logging.get_logger("hf_spectral.tracking").isEnabledFor(std_logging.WARNING)
        logging.set_verbosity_info()
        assert logging.get_logger("hf_spectral.tracking").isEnabledFor(std_logging.INFO)
        assert logging.get_verbosity() == std_logging.INFO
    finally:
        logging.set_verbosity(before)


def test_analyze_takes_token_and_cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    save_tiny("gpt2", folder)
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "org/tiny", {"a" * 40: folder}, {"main": "a" * 40})
    seen = {}
    import hf_spectral.sources.hub as hub

    real = hub.snapshot_download

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "snapshot_download", recording)
    snapshot = hf_spectral.analyze("org/tiny", cache_dir=cache, token="hf_test", progress=False)
    assert len(snapshot.matrices) > 0
    assert seen["token"] == "hf_test" and str(seen["cache_dir"]) == str(cache)
