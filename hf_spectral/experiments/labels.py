"""Random labels (docs/definitions.md §7, finding 7): one fixed, seeded permutation of all targets.

The authors shuffle the label column of the whole training set once, before the train/validation
split, so both splits carry the same random assignment and the multiset of labels (the class balance)
is unchanged. A recipe calls ``permute_labels`` on the full dataset and splits afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hf_spectral.errors import SpectralError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

DEFAULT_SEED = 12345


def permute_labels(dataset: "datasets.Dataset", column: str = "label", seed: int = DEFAULT_SEED) -> "datasets.Dataset":
    """``dataset`` with its ``column`` replaced by a fixed random permutation of the same values.

    The permutation depends only on ``seed`` and the number of rows (numpy ``default_rng(seed)``), so a
    run is reproducible; the column keeps its feature type (a ``ClassLabel`` stays one). Pass the whole
    dataset, before any train/validation split.
    """
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise SpectralError(f"permute_labels got a DatasetDict with splits {sorted(dataset)}: pass one "
                            "datasets.Dataset (the full training set) and split it afterwards, as the authors did")
    if not isinstance(dataset, datasets.Dataset):
        raise SpectralError(f"permute_labels needs a datasets.Dataset, got {type(dataset).__name__}: "
                            "convert it with datasets.Dataset.from_dict / from_pandas first")
    if column not in dataset.column_names:
        raise SpectralError(f"permute_labels: no column {column!r} in the dataset (columns: "
                            f"{', '.join(dataset.column_names)}); pass column= the label column")
    labels = np.asarray(dataset[column])
    shuffled = labels[np.random.default_rng(seed).permutation(len(labels))]
    feature = dataset.features[column]
    permuted = dataset.remove_columns(column).add_column(column, shuffled.tolist(), feature=feature)
    return permuted.select_columns(dataset.column_names)  # the original column order
