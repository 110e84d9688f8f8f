"""`checkout_revision` / `source_revision`: the commit and dirtiness of the checkout a package runs from (as the
process loaded it), "unknown" where there is none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import kasa_peft
from kasa_peft.pipelines import provenance
from kasa_peft.pipelines.provenance import UNKNOWN, checkout_revision, source_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository with a committed package ``src/pkg``; returns the package directory."""
    package = tmp_path / "repo" / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "commit", "-q", "-m", "first")
    return package


def test_a_clean_checkout_gives_its_head_commit(checkout):
    assert checkout_revision(checkout) == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": False}


def test_a_changed_tracked_file_makes_it_dirty_an_untracked_one_does_not(checkout):
    (checkout / "new.py").write_text("y = 2\n")
    assert checkout_revision(checkout)["dirty"] is False
    (checkout / "__init__.py").write_text("x = 2\n")
    assert checkout_revision(checkout) == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": True}
    git(checkout, "add", "__init__.py")  # staged counts too
    assert checkout_revision(checkout)["dirty"] is True


def test_a_package_outside_any_checkout_is_unknown(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert checkout_revision(tmp_path) == {"commit": UNKNOWN, "dirty": UNKNOWN}


def test_a_package_untracked_in_a_surrounding_checkout_is_unknown(checkout):
    installed = checkout.parent.parent / "venv" / "site-packages" / "other"  # e.g. a virtualenv inside a project
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert checkout_revision(installed) == {"commit": UNKNOWN, "dirty": UNKNOWN}


def test_no_git_on_the_path_is_unknown_not_a_crash(checkout, monkeypatch):
    monkeypatch.setenv("PATH", str(checkout))  # no git executable there
    assert checkout_revision(checkout) == {"commit": UNKNOWN, "dirty": UNKNOWN}


def test_this_package_reports_its_own_checkout_when_it_is_one():
    package = Path(kasa_peft.__file__).parent
    revision = source_revision()
    tracked = subprocess.run(["git", "-C", str(package), "ls-files", "--error-unmatch", "__init__.py"],
                             capture_output=True).returncode == 0
    if not tracked:
        assert revision == {"commit": UNKNOWN, "dirty": UNKNOWN}
    else:
        assert revision["commit"] == git(package, "rev-parse", "HEAD")
        assert isinstance(revision["dirty"], bool)


def test_a_record_names_the_code_as_the_process_loaded_it_dirty_if_the_checkout_moved_since(checkout, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE", checkout)
    loaded = checkout_revision(checkout)
    monkeypatch.setattr(provenance, "LOADED", loaded)
    assert source_revision() == loaded and loaded["dirty"] is False
    git(checkout, "commit", "--allow-empty", "-qm", "a commit made while the run trained")
    assert source_revision() == {"commit": loaded["commit"], "dirty": True}


def test_a_rewritten_benchmark_record_is_output_not_a_code_change(checkout):
    repo = checkout.parents[1]
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "r.json").write_text("{}\n")
    (repo / "benchmarks" / "table.py").write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "records")
    (repo / "benchmarks" / "results" / "r.json").write_text('{"run": 2}\n')  # a table ran again
    assert checkout_revision(checkout)["dirty"] is False
    (repo / "benchmarks" / "table.py").write_text("x = 2\n")  # a benchmark's code changed
    assert checkout_revision(checkout)["dirty"] is True
