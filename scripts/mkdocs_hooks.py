"""MkDocs hook: publish the figures of ``benchmarks/results/`` with the documentation site.

The benchmark scripts write their figures to ``benchmarks/results/``, and the pages in ``docs/``
link them as ``../benchmarks/results/NAME.png`` (which also works when GitHub renders a page).
That folder is outside ``docs_dir``, so MkDocs would report the links as broken: this hook adds
each figure to the site as ``benchmarks/results/NAME.png`` and points the links there.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
_LINKED_AS = "../benchmarks/results/"
_PUBLISHED_AS = "benchmarks/results/"


def on_files(files, config):
    for png in sorted(_RESULTS.glob("*.png")):
        files.append(File.generated(config, _PUBLISHED_AS + png.name, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    # the pages sit at the top of docs/, so ../benchmarks/results/ of the checkout is
    # benchmarks/results/ of the site
    if "/" not in page.file.src_uri:
        markdown = markdown.replace("](" + _LINKED_AS, "](" + _PUBLISHED_AS)
    return markdown
