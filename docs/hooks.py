"""MkDocs hook: serve the plots of ``benchmarks/results/`` under ``results/plots/`` without
copying them into ``docs/`` (the generated result pages link them there)."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.rglob("*.png")):
        uri = "results/plots/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
