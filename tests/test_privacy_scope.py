from __future__ import annotations

import pytest
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fitfed.privacy_scope import SCOPE_HEADER, ScopeStamp


def test_stamp_marks_the_result_and_leaves_its_data():
    # Prepare
    result = Shareable()
    result["DXO"] = {"data": [1, 2, 3]}

    # Execute
    stamped = ScopeStamp(scope="strict").process(result, FLContext())

    # Assert
    assert stamped.get_header(SCOPE_HEADER) == "strict"
    assert stamped["DXO"] == {"data": [1, 2, 3]}


def test_stamp_needs_a_scope_name():
    with pytest.raises(ValueError, match="scope must name the privacy scope"):
        ScopeStamp(scope="")
