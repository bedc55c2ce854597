"""The public API of toy_lm is re-exported once, from the package (STYLE.md)."""

import toy_lm


def test_every_public_name_imports():
    assert "analyze_tree" in toy_lm.__all__ and "TransformerPolicy" in toy_lm.__all__
    for name in toy_lm.__all__:
        assert getattr(toy_lm, name) is not None, name
    assert toy_lm.__version__
