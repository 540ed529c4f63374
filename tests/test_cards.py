"""Model cards: the "Spectral analysis" section round-trips through huggingface_hub.ModelCard.load,
re-running replaces it (exactly one section), tags are added once, existing metadata and text are
kept, figures are written next to the card and linked relatively; the ``card`` command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_spectral.cards import END, START, replace_section, summary_table, update_model_card
from hf_spectral.errors import SpectralError
from test_plots import assert_not_blank, make_dynamics

EXISTING = """---
license: apache-2.0
language:
- en
tags:
- text-generation
- hf-spectral
datasets:
- wikitext
base_model: gpt2
---

# My model

Some words the author wrote. | a pipe, <b>html</b>

## Limitations

Be careful.
"""


@pytest.fixture(scope="module")
def dyn():
    return make_dynamics(steps=(0, 16, 128, 1024, 8192))


@pytest.fixture
def quick_figures(monkeypatch):
    """Skip rendering PNGs where the figures are not what is tested (the card text is): a stub file per figure."""
    import hf_spectral.plots

    def save_figure(fig, stem, formats=("png",), **kw):
        path = Path(stem).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
        return [path]

    monkeypatch.setattr(hf_spectral.plots, "save_figure", save_figure)


def test_new_card_from_template_round_trips(tmp_path, dyn):
    path = tmp_path / "repo" / "README.md"
    returned = update_model_card(path, dyn)
    card = ModelCard.load(path)
    assert card.content == returned.content
    assert card.data.tags == ["hf-spectral", "spectral-analysis"]
    text = card.text
    assert text.count(START) == 1 and text.count(END) == 1 and text.count("## Spectral analysis") == 1
    assert text.index("## Evaluation") < text.index(START)  # where the template puts it
    assert "# tiny-gpt2" in text  # the model name from the source
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["spectral_plots/training_rank.png", "spectral_plots/rank_heatmap.png",
                     "spectral_plots/summary.png", "spectral_plots/singular_values.png"]
    for link in links:
        assert_not_blank(path.parent / link)


def test_rerun_replaces_the_section_and_keeps_metadata(tmp_path, dyn, quick_figures):
    path = tmp_path / "README.md"
    path.write_text(EXISTING, encoding="utf-8")
    update_model_card(path, dyn)
    first = path.read_text(encoding="utf-8")
    # the author edits the card after the section; a re-run with new numbers keeps that edit
    path.write_text(first + "\n## Citation\n\nCite us.\n", encoding="utf-8")
    update_model_card(path, make_dynamics())
    card = ModelCard.load(path)
    text = card.text
    assert text.count(START) == 1 and text.count("## Spectral analysis") == 1
    assert "6 snapshots from step 0 to step 65,536" in text and "5 snapshots" not in text
    assert text.index(END) < text.index("## Citation")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["datasets"] == ["wikitext"] and data["base_model"] == "gpt2"
    assert data["tags"] == ["text-generation", "hf-spectral", "spectral-analysis"]
    assert text.startswith("\n# My model\n\nSome words the author wrote. | a pipe, <b>html</b>\n\n## Limitations\n\nBe careful.")
    # idempotent: the same dynamics twice give the same card
    update_model_card(path, make_dynamics())
    assert ModelCard.load(path).content == card.content


def test_model_card_object_and_absolute_links(tmp_path, dyn, quick_figures):
    card = ModelCard(EXISTING)
    images = tmp_path / "out" / "imgs"
    same = update_model_card(card, dyn, images_dir=images, repo_relative_images=False)
    assert same is card and not (tmp_path / "out" / "README.md").exists()  # changed in place, not saved
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    assert links and all(Path(link).is_absolute() and Path(link).is_file() for link in links)
    bare = update_model_card(ModelCard(EXISTING), dyn)  # no place for figures: table and text only
    assert "![" not in bare.text and "| step |" in bare.text


def test_summary_table_matches_numpy(dyn):
    table = summary_table(dyn, "eval_accuracy")
    rows = [line.strip("|").split("|") for line in table.splitlines()]
    header = [h.strip() for h in rows[0]]
    assert header[:3] == ["step", "mean erank/R", "mean srank/R"] and header[-1] == "eval_accuracy"
    t = dyn.trajectories
    for row in rows[2:]:
        step = int(row[0].strip().replace(",", ""))
        expected = t[(t["step"] == step) & (t["status"] == "ok")]["normalized_effective_rank"].to_numpy().mean()
        assert float(row[1]) == pytest.approx(expected, rel=1e-3)
        logged = dyn.training[(dyn.training["metric"] == "eval_accuracy") & (dyn.training["step"] <= step)]
        assert float(row[-1]) == pytest.approx(logged.sort_values("step")["value"].iloc[-1], rel=1e-3)
    many = make_dynamics(steps=tuple(range(0, 2000, 100)), agreement=False, alignment=False, training=False)
    lines = summary_table(many).splitlines()
    assert len(lines) == 2 + 8 and lines[2].startswith("| 0 |") and lines[-1].startswith("| 1,900 |")


def test_section_markers_and_escaping():
    assert replace_section("# Card\n", "S1") == f"# Card\n\n{START}\nS1\n{END}\n"
    once = replace_section("# Card\n", "S1")
    assert replace_section(once, "S2") == f"# Card\n\n{START}\nS2\n{END}\n"
    crlf = replace_section("# Card\r\nText\r\n", "line1\nline2")
    assert "\n" not in crlf.replace("\r\n", "")
    for broken in (f"{START}\n{START}\n{END}", f"{END}\n{START}", f"{START} only"):
        with pytest.raises(SpectralError, match="keep exactly one pair") as info:
            replace_section(broken, "S")
        assert "\n" not in str(info.value)


def test_layer_names_are_escaped_in_markdown(tmp_path):
    dyn = make_dynamics(steps=(0, 100), agreement=False, alignment=False, training=False)
    evil = "lm_head<img src=x onerror=alert(1)>|.weight"
    dyn.trajectories["matrix"] = dyn.trajectories["matrix"].replace("lm_head.weight", evil)
    card = update_model_card(ModelCard("---\nlicense: mit\n---\n# x\n"), dyn)
    assert "<img" not in card.text and "&lt;img src=x onerror=alert(1)&gt;\\|.weight" in card.text


def test_card_command(tmp_path, monkeypatch, capsys, quick_figures):
    import hf_spectral.series as series_module
    from hf_spectral.cli import main

    calls = []
    monkeypatch.setattr(series_module, "dynamics_from_source",
                        lambda source, **kw: calls.append((source, kw)) or make_dynamics(steps=(0, 100), agreement=False, alignment=False, training=False),
                        raising=False)
    run = tmp_path / "run"
    run.mkdir()
    assert main(["card", str(run), "--no-progress", "--reference", "first"]) == 0
    assert calls[0][0] == str(run) and calls[0][1]["reference"] == "first"
    card = ModelCard.load(run / "README.md")  # default: SOURCE/README.md
    assert "hf-spectral" in card.data.tags and (run / "spectral_plots" / "rank_heatmap.png").is_file()
    assert "spectral analysis section written to" in capsys.readouterr().out
    assert main(["card", "org/model-on-hub"]) == 2
    assert "pass --model-card PATH" in capsys.readouterr().err
