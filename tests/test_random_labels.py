"""hf_spectral.experiments.permute_labels: one fixed, seeded permutation of all labels (docs/definitions.md §7)."""

import subprocess
import sys
from collections import Counter

import datasets
import numpy as np
import pytest

import hf_spectral
from hf_spectral.errors import SpectralError


def labelled(n: int = 200, classes: int = 10) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    features = datasets.Features({"x": datasets.Value("int64"), "label": datasets.ClassLabel(num_classes=classes),
                                  "note": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"x": list(range(n)), "label": rng.integers(0, classes, n).tolist(), "note": [f"row {i}" for i in range(n)]},
        features=features,
    )


def test_public_and_lazy():
    assert hf_spectral.experiments.permute_labels is hf_spectral.experiments.labels.permute_labels
    assert "permute_labels" in dir(hf_spectral.experiments)
    # a fresh process: the subpackage is an attribute of the package without importing it first, and cheap
    code = ("import sys, hf_spectral; f = hf_spectral.experiments.permute_labels; "
            "print(f.__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["permute_labels", "False"]


def test_a_fixed_permutation_of_the_same_labels():
    data = labelled()
    out = hf_spectral.experiments.permute_labels(data, seed=7)
    before, after = np.array(list(data["label"])), np.array(list(out["label"]))
    assert Counter(before.tolist()) == Counter(after.tolist())  # the multiset (class balance) is unchanged
    assert (before != after).mean() > 0.7  # ~90% of rows get another label with 10 classes
    # exactly the permutation numpy's default_rng(seed) draws, applied to the label column
    np.testing.assert_array_equal(after, before[np.random.default_rng(7).permutation(len(before))])
    assert list(out["x"]) == list(data["x"]) and list(out["note"]) == list(data["note"])  # the other columns stay where they were
    assert out.column_names == data.column_names and out.features == data.features  # ClassLabel kept


def test_deterministic_per_seed():
    data = labelled()
    first = list(hf_spectral.experiments.permute_labels(data, seed=3)["label"])
    assert list(hf_spectral.experiments.permute_labels(data, seed=3)["label"]) == first
    assert list(hf_spectral.experiments.permute_labels(data, seed=4)["label"]) != first
    assert list(hf_spectral.experiments.permute_labels(data)["label"]) == list(hf_spectral.experiments.permute_labels(
        data, seed=12345)["label"])  # the documented default seed


def test_other_column_and_bad_input():
    data = labelled().rename_column("label", "fine_label")
    out = hf_spectral.experiments.permute_labels(data, column="fine_label", seed=1)
    assert sorted(list(out["fine_label"])) == sorted(list(data["fine_label"])) and list(out["fine_label"]) != list(data["fine_label"])
    with pytest.raises(SpectralError, match="no column 'label'.*fine_label"):
        hf_spectral.experiments.permute_labels(data)
    with pytest.raises(SpectralError, match="before|split"):
        hf_spectral.experiments.permute_labels(datasets.DatasetDict({"train": data}), column="fine_label")
    with pytest.raises(SpectralError, match="datasets.Dataset"):
        hf_spectral.experiments.permute_labels({"label": [0, 1]})
