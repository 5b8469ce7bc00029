"""The bounded readers of vggfeat.utils.files: JSON nested past Python's recursion limit is a damaged file like any
other, so each caller gives its usual one-line error (or treats the file as absent), never a RecursionError."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vggfeat.errors import DatasetError
from vggfeat.utils.files import load_json_file, read_json

DEEP = "[" * 100_000 + "]" * 100_000  # 200 kB


def test_json_nested_past_the_recursion_limit_is_a_value_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: not valid JSON \(nested .*\); rebuild it$"):
        read_json(path, DatasetError, "rebuild it")
    with pytest.raises(ValueError, match="nested"):
        load_json_file(path)  # the bookkeeping reader: its callers catch ValueError as "damaged"
    from vggfeat.utils.files import parse_json  # the one parse both use

    with pytest.raises(ValueError, match="nested"):
        parse_json(DEEP.encode())
    assert parse_json("[" * 50 + "1" + "]" * 50) == eval("[" * 50 + "1" + "]" * 50)  # real nesting still reads


def test_a_store_whose_manifest_nests_too_deep_is_one_store_error(tmp_path):
    from vggfeat.features.store import StoreError, load_store

    np.save(tmp_path / "features.npy", np.zeros((4, 8), np.float32))
    (tmp_path / "manifest.json").write_text(DEEP)
    with pytest.raises(StoreError, match=rf"^{re.escape(str(tmp_path / 'manifest.json'))}: not valid JSON"):
        load_store(tmp_path)
