from __future__ import annotations

import types

import taskflow


def test_all_is_sorted() -> None:
    assert taskflow.__all__ == sorted(taskflow.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in taskflow.__all__ if not hasattr(taskflow, name)]

    assert missing == []


def test_every_public_name_in_the_package_is_in_all() -> None:
    public = {
        name
        for name, member in vars(taskflow).items()
        if not name.startswith("_")
        and not isinstance(member, types.ModuleType)  # submodules become attributes on import
        and name != "annotations"  # `from __future__ import annotations`
    }

    assert public - set(taskflow.__all__) == set()
    assert "Job" in public  # an alias counts, not only classes and functions
