"""Several training roots merged into one dataset, as the original's init_from_folders: each root's identities
sorted, labels shifted past the earlier roots' classes, no identity cut."""
import os

import numpy as np
import pytest

from probface_tf.data.dataset import merge_datasets, open_dataset
from probface_tf.data.errors import DatasetFormatError


def _root(tmp_path, name, identities):
    for identity, count in identities.items():
        os.makedirs(str(tmp_path / name / identity))
        for k in range(count):
            (tmp_path / name / identity / ("%02d.jpg" % k)).write_bytes(b"x")
    return str(tmp_path / name)


def test_roots_are_merged_with_shifted_labels(tmp_path):
    a = _root(tmp_path, "a", {"bob": 2, "amy": 1})
    b = _root(tmp_path, "b", {"zed": 3, "cat": 2, "dan": 1})
    merged = open_dataset([a, b], max_identities=1)  # the cut does not apply to a list of roots
    expected = []  # (path, label) as the original lists them: root by root, sorted names, sorted files
    base = 0
    for root in (a, b):
        names = sorted(os.listdir(root))
        for label, name in enumerate(names):
            files = sorted(os.listdir(os.path.join(root, name)))
            expected += [(os.path.join(root, name, f), base + label) for f in files]
        base += len(names)
    assert [(str(s), int(l)) for s, l in zip(merged.sources, merged.labels)] == expected
    assert merged.num_classes == 5 and merged.class_names == ["amy", "bob", "cat", "dan", "zed"]
    assert [len(i) for i in merged.class_indices()] == [1, 2, 2, 1, 3]
    single = open_dataset(b, max_identities=1)
    assert single.num_classes == 1  # one root keeps the cut


def test_empty_list_is_an_error():
    with pytest.raises(DatasetFormatError, match="list of training roots is empty"):
        merge_datasets([])
