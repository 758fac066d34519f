"""The README's compatibility matrix, generated from a run of ``tests/test_rl_libraries.py``.

    python tests/compat_matrix.py          # run the library tests, write compat_matrix.json and the README block

The run's outcome of every test of each row (``ROWS`` in the test file) and the installed
version of each row's packages go to ``tests/compat_matrix.json``; the README block between
the markers below is rendered from that file. ``test_compat_matrix_in_readme_is_current``
fails when the block and the file disagree or the file names other tests than ``ROWS``, so
the table cannot drift from the tests that exercise it.
"""

from __future__ import annotations

import json
import pathlib
import platform
import re
import sys
from importlib.metadata import version

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
README = REPO / "README.md"
RESULTS = TESTS / "compat_matrix.json"
TEST_FILE = TESTS / "test_rl_libraries.py"
BEGIN, END = "<!-- compat-matrix:begin (python tests/compat_matrix.py) -->", "<!-- compat-matrix:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r"(.*?)" + re.escape(END), re.S)


def render(recorded: dict) -> str:
    """The markdown table of a recorded run."""
    lines = [f"Recorded with Python {recorded['python']}, gymnasium {recorded['gymnasium']}, "
             f"torch {recorded['torch']} (CPU).", "",
             "| library | version | idiom (unchanged, or with the argument shown) | status | test |",
             "| --- | --- | --- | --- | --- |"]
    for row in recorded["rows"]:
        versions = ", ".join(f"{d} {v}" for d, v in row["versions"].items())
        status = "passes" if all(o == "passed" for o in row["outcomes"].values()) else \
            "FAILS: " + ", ".join(t for t, o in row["outcomes"].items() if o != "passed")
        tests = "<br>".join(f"`{t}`" for t in row["tests"])
        lines.append(f"| {row['library']} | {versions} | {row['idiom']} | {status} | {tests} |")
    return "\n".join(lines)


def readme_block(text: str | None = None) -> str:
    text = README.read_text() if text is None else text
    match = _BLOCK.search(text)
    if match is None:
        raise ValueError(f"README.md has no compatibility-matrix block ({BEGIN} ... {END})")
    return match.group(1).strip("\n")


class _Outcomes:
    """A pytest plugin: the outcome of each test function by its name."""

    def __init__(self):
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::", 1)[1]
        if report.when == "call" or report.outcome != "passed":
            if self.outcomes.get(name) in (None, "passed"):
                self.outcomes[name] = report.outcome


def main(argv: list[str] | None = None) -> int:
    import pytest

    sys.path.insert(0, str(TESTS))
    import test_rl_libraries

    plugin = _Outcomes()
    tests = [t for _, _, names in test_rl_libraries.ROWS.values() for t in names]
    code = pytest.main([str(TEST_FILE), "-q", "-p", "no:cacheprovider", *(argv or []),
                        "-k", " or ".join(sorted({t.split("[")[0] for t in tests}))], plugins=[plugin])
    rows = []
    for library, (dists, idiom, names) in test_rl_libraries.ROWS.items():
        rows.append({"library": library, "versions": {d: version(d) for d in dists}, "idiom": idiom,
                     "tests": list(names), "outcomes": {t: plugin.outcomes.get(t, "not run") for t in names}})
    import gymnasium
    import torch

    recorded = {"python": platform.python_version(), "gymnasium": gymnasium.__version__,
                "torch": torch.__version__, "rows": rows}
    RESULTS.write_text(json.dumps(recorded, indent=1) + "\n")
    text = README.read_text()
    readme_block(text)  # there is a block
    README.write_text(_BLOCK.sub(lambda _: f"{BEGIN}\n{render(recorded)}\n{END}", text))
    print(render(recorded))
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
