"""MkDocs hooks: serve the plots of ``benchmarks/results/`` under ``results/plots/`` without
copying them into ``docs/``. The generated result pages link each plot where it is in the
repository (``../../benchmarks/results/...``, so the links work on GitHub and in a clone);
on the site those links point at ``plots/...`` instead."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# a markdown link target in docs/results/*.md to a file of benchmarks/results/
_REPO_LINK = re.compile(r"\]\(\.\./\.\./benchmarks/results/")


def on_files(files, config):
    for png in sorted(RESULTS.rglob("*.png")):
        uri = "results/plots/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("results/") and page.file.src_uri.count("/") == 1:
        return _REPO_LINK.sub("](plots/", markdown)
    return markdown
