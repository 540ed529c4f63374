"""The HTML report: self-contained (no network, images embedded), escaped, non-blank figures,
numbers in the summary and the per-matrix table checked against numpy; the ``report`` command."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from hf_spectral.report import write_report
from test_plots import MATRICES, assert_not_blank, make_dynamics

EVIL = "lm_head<script>alert('x')</script>&.weight"


class Page(HTMLParser):
    """Every tag with its attributes, and the visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    dyn = make_dynamics(flagged=(MATRICES[2][0], 3))
    dyn.trajectories["matrix"] = dyn.trajectories["matrix"].replace(MATRICES[4][0], EVIL)
    dyn.singular_values["matrix"] = dyn.singular_values["matrix"].replace(MATRICES[4][0], EVIL)
    out = tmp_path_factory.mktemp("report")
    index = write_report(dyn, out, title="Run <1> & co", formats=("png",))  # SVG files: test_svg_only_report_inlines_svg
    return dyn, index, index.read_text(encoding="utf-8")


def test_page_is_self_contained(report):
    _, index, text = report
    page = Page(text)
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]!r}> loads something"
    assert not re.search(r"https?://", text.replace("arXiv 2408.11804", "")), "no URL at all in the page"
    assert all(tag not in ("script", "link", "iframe") for tag, _ in page.tags)
    assert "<style>" in text


def test_embedded_figures_are_real_pictures_in_order(report):
    _, index, text = report
    images = [attrs for tag, attrs in Page(text).tags if tag == "img"]
    assert len(images) == 9  # every figure: the series has every table
    for attrs in images:
        data = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert_not_blank(imread(io.BytesIO(data), format="png"))
    order = [attrs["id"] for tag, attrs in Page(text).tags if tag == "figure"]
    assert order[0] == "training_rank" and order[1:4] == ["summary", "rank_heatmap", "rank_lines"]
    for key in order:  # the files beside the page
        assert (index.parent / "figures" / f"{key}.png").stat().st_size > 1000


def test_names_and_title_are_escaped(report):
    _, _, text = report
    assert "<script>" not in text and "alert('x')" not in text.replace("alert(&#x27;x&#x27;)", "")
    assert "lm_head&lt;script&gt;" in text
    assert "<title>Run &lt;1&gt; &amp; co</title>" in text
    page_text = "".join(Page(text).text)
    assert EVIL in page_text  # shown as written, in the table


def test_summary_and_table_match_numpy(report):
    dyn, index, text = report
    t = dyn.trajectories
    steps = sorted(set(t["step"]))
    ok = t[t["status"] == "ok"]
    means = [ok[ok["step"] == s]["normalized_effective_rank"].to_numpy().mean() for s in steps]
    page_text = " ".join(" ".join(Page(text).text).split())
    assert f"Mean normalized effective rank went from {means[0]:.3f} to {means[-1]:.3f} ({(means[-1] - means[0]) / means[0]:+.1%})" in page_text
    change = {}
    for name, rows in ok.groupby("matrix"):
        rows = rows.sort_values("step")
        change[name] = rows["normalized_effective_rank"].iloc[-1] - rows["normalized_effective_rank"].iloc[0]
    assert f"Largest rank drops: {min(change, key=change.get)}" in page_text
    table = pd.read_csv(index.parent / "layers.csv")
    assert list(table["matrix"]) == [MATRICES[0][0], MATRICES[1][0], MATRICES[2][0], MATRICES[3][0], EVIL]
    np.testing.assert_allclose(table["erank_change"].to_numpy(), [change[m] for m in table["matrix"]], rtol=1e-12)
    assert table.loc[2, "flagged"] and not table.loc[0, "flagged"]
    assert "eval_accuracy first reached 0.9 at step" in page_text
    # the rank change around the crossing against the window before it (edges: the nearest snapshots)
    accuracy = dyn.training[dyn.training["metric"] == "eval_accuracy"].sort_values("step")
    crossed = int(accuracy[accuracy["value"] >= 0.9]["step"].iloc[0])
    h = round(0.05 * steps[-1])
    a, b, c = (int(np.argmin(np.abs(np.array(steps) - e))) for e in (crossed - 3 * h, crossed - h, crossed + h))
    change, before = means[c] - means[b], means[b] - means[a]
    verdict = "coincides" if change < 0 and (before >= 0 or change / before >= 3) else "does not coincide"
    assert f"The rank drop {verdict} with that crossing" in page_text
    assert (f"around it (steps {steps[b]:,}–{steps[c]:,}) the mean effective rank changed by "
            f"{change:+.3f}, against {before:+.3f} in the {steps[b] - steps[a]:,} steps before") in page_text


def test_single_snapshot_without_optional_tables(tmp_path):
    dyn = make_dynamics(steps=(300,), alignment=False, training=False)  # agreement with itself: not shown
    index = write_report(dyn, tmp_path, formats=("png",))
    text = index.read_text(encoding="utf-8")
    page_text = " ".join(" ".join(Page(text).text).split())
    assert "1 snapshot at step 300; 5 weight matrices." in page_text
    assert "A single snapshot: nothing changes over time" in page_text
    assert "Not shown:" in page_text
    for reason in ("no training log", "no other snapshot to compare", "alignment was computed"):
        assert reason in page_text
    figures = [attrs["id"] for tag, attrs in Page(text).tags if tag == "figure"]
    assert figures == ["summary", "rank_heatmap", "rank_lines", "singular_values"]
    assert not list((tmp_path / "figures").glob("*.svg"))


def test_svg_only_report_inlines_svg(tmp_path):
    dyn = make_dynamics(steps=(0, 100), agreement=False, alignment=False, training=False)
    dyn.meta["alignment"] = "no alignment stored (the dynamics layer's reason)"
    text = write_report(dyn, tmp_path, formats=("svg",)).read_text(encoding="utf-8")
    assert "analyze with --top-k K" in text  # our reason when the dynamics give none
    assert "no alignment stored (the dynamics layer&#x27;s reason)" in text
    tags = [tag for tag, _ in Page(text).tags]
    assert "img" not in tags and tags.count("svg") == 4
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "rank_heatmap.svg", "rank_lines.svg", "singular_values.svg", "summary.svg"]
    assert "Normalized effective rank of every weight matrix over training" in text


def test_training_log_without_accuracy_asks_for_a_metric(tmp_path):
    dyn = make_dynamics(steps=(0, 100), agreement=False, alignment=False)
    dyn.training = dyn.training[dyn.training["metric"] == "eval_loss"]
    text = write_report(dyn, tmp_path, formats=("svg",)).read_text(encoding="utf-8")
    assert "no accuracy in the training log (logged: eval_loss); choose a metric with --metric NAME" in text
    assert 'id="training_rank"' not in text


def test_bad_input_raises_one_line_errors(tmp_path):
    from hf_spectral.errors import SpectralError

    with pytest.raises(SpectralError, match="at least one figure format"):
        write_report(make_dynamics(), tmp_path, formats=())
    empty = make_dynamics()
    empty.trajectories = empty.trajectories.iloc[0:0]
    with pytest.raises(SpectralError, match="nothing to report"):
        write_report(empty, tmp_path)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_dynamics(monkeypatch):
    """Stand in for hf_spectral.dynamics (another engineer's layer): record the call, return tables."""
    import hf_spectral.dynamics as dynamics_module
    import hf_spectral.series as series_module

    calls = []

    def dynamics_from_source(source, **kwargs):
        calls.append((source, kwargs))
        return make_dynamics(steps=(0, 10, 100), agreement=False, alignment=False)

    monkeypatch.setattr(series_module, "dynamics_from_source", dynamics_from_source, raising=False)
    monkeypatch.setattr(dynamics_module, "load_dynamics", lambda path: calls.append((str(path), "loaded")) or make_dynamics(steps=(0, 10, 100), agreement=False, alignment=False), raising=False)
    return calls


def test_report_command(tmp_path, fake_dynamics, capsys, monkeypatch):
    import hf_spectral.report
    from hf_spectral.cli import main

    out = tmp_path / "out"
    code = main(["report", "org/model", "--output", str(out), "--revisions", "step1,step2", "--top-k", "8", "--no-progress",
                 "--formats", "png", "--metric", "eval_loss", "--threshold", "0.5"])
    assert code == 0
    source, kwargs = fake_dynamics[0]
    assert source == "org/model" and kwargs["revisions"] == "step1,step2" and kwargs["reference"] == "final"
    assert kwargs["top_k"] == 8 and kwargs["progress"] is False and kwargs["cache_dir"] is None
    assert kwargs["alignment"] is True and kwargs["top"] == 10  # like `hf-spectral dynamics`
    monkeypatch.setattr(hf_spectral.report, "write_report", lambda dyn, out, **kw: Path(out) / "index.html")
    main(["report", "a", "b", "--output", str(tmp_path / "o2"), "--formats", "png", "--no-alignment", "--reference", "first"])
    source, kwargs = fake_dynamics[1]
    assert source == ["a", "b"] and kwargs["alignment"] is False and kwargs["top_k"] == 20 and kwargs["reference"] == "first"
    assert f"report written to {out / 'index.html'}" in capsys.readouterr().out
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "eval_loss first reached 0.5" in text or "eval_loss never reached 0.5" in text
    assert not list((out / "figures").glob("*.svg"))


def test_report_command_reads_saved_dynamics(tmp_path, fake_dynamics, monkeypatch):
    import hf_spectral.report
    from hf_spectral.cli import main

    written = []
    monkeypatch.setattr(hf_spectral.report, "write_report", lambda dyn, out, **kw: written.append((out, kw)) or Path(out) / "index.html")

    saved = tmp_path / "dyn"
    saved.mkdir()
    (saved / "dynamics.json").write_text("{}")
    assert main(["report", str(saved), "--output", str(tmp_path / "out"), "--formats", "png"]) == 0
    assert fake_dynamics == [(str(saved), "loaded")]
    assert written == [(tmp_path / "out", {"title": None, "formats": ("png",), "metric": None, "threshold": 0.9})]


def test_report_command_errors_are_one_line(tmp_path, fake_dynamics, capsys):
    from hf_spectral.cli import main

    assert main(["report", "x", "--output", str(tmp_path), "--formats", "gif"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot save") and err.count("\n") == 1


def test_default_title_names_the_run_of_a_callback_record(tmp_path):
    dyn = make_dynamics()
    dyn.meta["source"] = str(tmp_path / "my-run" / "spectral")
    index = write_report(dyn, tmp_path / "report")
    assert "<title>Spectral dynamics of my-run</title>" in index.read_text()
