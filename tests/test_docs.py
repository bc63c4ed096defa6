"""The documentation: the MkDocs site builds with --strict, and the README stays a short front page.

`mkdocs build --strict` turns every warning into a failure: a link to a missing page or file, an
anchor that no heading has, a page left out of the navigation (mkdocs.yml sets each of these
checks to warn), or an API docstring that mkdocstrings cannot render. The site is built into a
temporary folder, never into the checkout.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # not a skip: `make test` installs the docs extra (scripts/setup.sh), and a skipped build
    # would let a broken link through
    import importlib.util

    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m) is None]
    assert not missing, f'{missing} missing: pip install -e ".[docs]" (scripts/setup.sh does)'
    # NO_MKDOCS_2_WARNING: mkdocs-material prints a banner about its successor on every build
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    run = _build(ROOT / "mkdocs.yml", site)
    assert run.returncode == 0, run.stdout + run.stderr
    # the pages were written, the API reference was generated from the docstrings, and the
    # benchmark figures were published beside them
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="napari_patchdiff.api.solve"' in api and 'id="napari_patchdiff.api.sample"' in api
    assert (site / "benchmarks" / "results" / "calibration.png").is_file()
    assert (site / "adaptation.png").is_file()
    assert not (ROOT / "site").exists(), "the build must not write into the checkout"


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The check above is not vacuous: the same configuration on a copy of docs/ with one
    broken link and one missing anchor fails, naming both."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "mkdocs_hooks.py", tmp_path / "scripts" / "mkdocs_hooks.py")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for png in (ROOT / "benchmarks" / "results").glob("*.png"):
        shutil.copy(png, tmp_path / "benchmarks" / "results" / png.name)
    # mkdocstrings reads the package from the copy's folder: keep the reference out of it
    api = tmp_path / "docs" / "api.md"
    api.write_text(re.sub(r"^::: .*$", "", api.read_text(encoding="utf-8"), flags=re.M),
                   encoding="utf-8")
    cli = tmp_path / "docs" / "cli.md"
    cli.write_text(cli.read_text(encoding="utf-8")
                   + "\nSee [a page](no-such-page.md) and [a heading](api.md#no-such-heading).\n",
                   encoding="utf-8")
    run = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "no-such-page.md" in out and "no-such-heading" in out, out
    assert "Aborted with 2 warnings in strict mode" in out, out  # those two, and nothing else


def test_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 350, f"README.md has {len(lines)} lines: move details into docs/"
    text = "\n".join(lines)
    # the two commands of the quick start, as the Makefile runs them
    assert "make demo   # set up .venv" in text and "make test   # set up .venv" in text


def _relative_links(markdown: str) -> list[str]:
    markdown = re.sub(r"```.*?```", "", markdown, flags=re.S)  # no links inside code blocks
    markdown = re.sub(r"`[^`\n]*`", "", markdown)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_relative_links_exist():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert len(links) >= 10  # the pictures and the documentation pages
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
