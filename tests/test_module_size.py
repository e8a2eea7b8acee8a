"""No module of the library or the gateway grows past what a newcomer reads in one sitting."""

from __future__ import annotations

from support import REPO

#: Lines per module (issue 14: "no library module over ~500 lines").
MAX_MODULE_LINES = 500


def test_no_module_is_longer_than_the_limit():
    modules = sorted(
        path for package in ("coapdev", "gateway") for path in (REPO / package).rglob("*.py")
    )
    assert len(modules) > 50, "the walk found too few modules: wrong root?"
    too_long = {
        str(path.relative_to(REPO)): lines
        for path in modules
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"split these modules (more than {MAX_MODULE_LINES} lines): {too_long}"
