"""The examples in docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["columns", "concepts", "dedup", "evaluate", "names", "neardup", "options", "report", "signals", "sqlcheck"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str):
    module = importlib.import_module(f"lakecurate.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0, module.__name__
