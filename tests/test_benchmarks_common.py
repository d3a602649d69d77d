"""benchmarks/common.py: a results file names a commit, and a dirty tree is refused or flagged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "r.md").write_text("old\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    monkeypatch.setattr(common, "REPO", tmp_path)
    return tmp_path


def test_clean_tree_names_its_commit(repo):
    prov = common.provenance()
    assert prov["git_commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert prov["git_clean"] and prov["git_dirty_paths"] == []
    common.require_clean(allow_dirty=False)  # does not stop
    assert "clean tree" in common.header_lines(common.finish(prov), "cmd")[0]


def test_results_files_do_not_make_the_tree_dirty(repo):
    (repo / "benchmarks" / "results" / "r.md").write_text("new numbers\n")
    assert common.dirty_paths() == []


def test_dirty_tree_is_refused_or_flagged(repo):
    (repo / "code.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 1\n")
    assert common.dirty_paths() == ["code.py", "new.py"]  # first path keeps its first letter
    with pytest.raises(SystemExit, match="uncommitted changes"):
        common.require_clean(allow_dirty=False)
    common.require_clean(allow_dirty=True)
    prov = common.finish(common.provenance())
    assert not prov["git_clean"]
    assert "uncommitted changes: code.py, new.py" in common.header_lines(prov, "cmd")[0]
