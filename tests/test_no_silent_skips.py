"""A test whose dev dependency or download is missing skips on a laptop but fails under CI=true:
CI installs every dev extra and reaches the registry, so a skip there hides a broken install.
Every way of skipping in the suite goes through tests/ci.py, which this checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ci import require_module, unavailable

TESTS = Path(__file__).parent


def test_unavailable_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        unavailable("vocabulary download failed")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz"):
        require_module("no_such_module_xyz")


def test_unavailable_skips_on_a_laptop(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("offline")


def test_no_test_skips_around_ci():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("ci.py", Path(__file__).name):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"\bimportorskip\(|pytest\.skip\(|mark\.skip\(", code):
                offenders.append(f"{path.relative_to(TESTS)}:{n}: {line.strip()}")
            if "skipif(" in code:
                # The condition (this line and the next two) must let CI run the test.
                window = " ".join(path.read_text(encoding="utf-8").splitlines()[n - 1 : n + 2])
                if "in_ci()" not in window:
                    offenders.append(f"{path.relative_to(TESTS)}:{n}: {line.strip()}")
    assert not offenders, "skip through ci.unavailable / ci.require_module instead:\n" + "\n".join(offenders)
