"""The documentation site is checked like code.

- the pages generated from the records and the code (``docs/gen_pages.py``) are up to date:
  the cheap ones are re-rendered and compared byte for byte, the leaderboard pages (minutes of
  bootstrap) by the sha256 of their sources recorded in their header;
- the site builds with ``mkdocs build --strict`` (a broken link, anchor or reference fails);
- every ``python`` block of the site runs, at a tiny scale (protocol ``tiny``, small budgets);
  shell blocks are not run, but the ``n2n-gym`` subcommands and ``python -m`` modules they name
  must exist;
- the built front page is looked at in a real headless browser (Chromium): a screenshot that
  must show the page, with its theme. Without a browser it skips, except in CI (``CI=true``),
  where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import gen_pages  # noqa: E402

FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```", re.M | re.S)
KNOWN_LANGS = {"python", "bash", "text"}

# What makes an example tiny: the tests' substitutions, applied to the page's code as written.
TINY = [
    ('protocol="fast"', 'protocol="tiny"'),
    ('{"protocol": "fast"}', '{"protocol": "tiny"}'),
    ("range(30)", "range(2)"),
    ("BudgetTracker(budget=60)", "BudgetTracker(budget=3)"),
    ("for epoch in range(5)", "for epoch in range(1)"),
    ('dataset="digits")', 'dataset="digits", protocol="tiny")'),
]


def markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def code_blocks(lang: str | None = None) -> list[tuple[str, str, str]]:
    """(file, language, code) of every fenced block of the site and the README."""
    out = []
    for path in markdown_files():
        for m in FENCE.finditer(path.read_text()):
            if lang is None or m.group("lang") == lang:
                out.append((path.relative_to(ROOT).as_posix(), m.group("lang"), m.group("code")))
    return out


# ---------------------------------------------------------------------------- generated pages


def test_generated_pages_are_up_to_date():
    problems = gen_pages.generate(check=True, cheap_only=True, quiet=True)
    assert not problems, ("generated documentation is out of date; run `python docs/gen_pages.py` and commit:\n"
                          + "\n".join(problems))


def test_a_leaderboard_page_renders_from_its_records_alone():
    """One small leaderboard rendered in full, as the pages do: the package's leaderboard code
    on the committed records gives the table that the committed page holds."""
    table = gen_pages.leaderboard_md(["tas-mnist-flops020.jsonl"], heading="####")
    assert table.splitlines()[0].startswith("#### N2N-VGG13-MNIST-v0")
    assert table in (DOCS / "results" / "tas.md").read_text()


def test_staleness_is_detected(tmp_path, monkeypatch):
    """A changed record or a hand edit makes a page stale."""
    page = next(p for p in gen_pages.pages() if p.expensive)
    committed = (ROOT / page.path).read_text()
    assert gen_pages.stale_header(ROOT / page.path, page) is None
    edited = tmp_path / "page.md"
    edited.write_text(committed.replace("| rank |", "| Rank |", 1))
    assert "edited by hand" in gen_pages.stale_header(edited, page)
    monkeypatch.setattr(gen_pages, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    for name in page.sources + gen_pages.LEADERBOARD_CODE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / page.sources[0]).write_text((ROOT / page.sources[0]).read_text() + "\n")
    assert "older than " + page.sources[0] in gen_pages.stale_header(ROOT / page.path, page)


def test_every_plot_and_record_a_results_page_names_exists():
    for page in (DOCS / "results").glob("*.md"):
        text = page.read_text()
        assert "](plots/" not in text, f"{page.name}: a site-only plot link (broken on GitHub)"
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):  # relative to the page, as GitHub reads it
            assert link.startswith("../../benchmarks/results/"), f"{page.name}: {link}"
            assert (page.parent / link).resolve().is_file(), f"{page.name}: {link}"
        for name in re.findall(r"`benchmarks/results/([^`]+)`", text):
            assert (ROOT / "benchmarks" / "results" / name).exists(), f"{page.name}: {name}"


# ---------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_site_builds_strict(site):
    index = (site / "index.html").read_text()
    assert "n2n-gym" in index
    for page in ("mdp", "envs", "agents", "results/leaderboards", "results/baselines", "reproduce", "api"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "results" / "plots" / "baselines-digits-1000" / "profile-N2N-DigitsNet-Digits-v0-fast.png").is_file()
    # the pages link plots in the repository (for GitHub); docs/hooks.py points the site's at results/plots/
    baselines = (site / "results" / "baselines" / "index.html").read_text()
    assert 'src="../plots/baselines-digits-1000/profile-N2N-DigitsNet-Digits-v0-fast.png"' in baselines
    assert "../benchmarks/results/" not in baselines  # no repository path left on the site
    assert "class=\"doc doc-object" in (site / "api" / "index.html").read_text()  # mkdocstrings rendered


# ---------------------------------------------------------------------------- code examples


def test_code_blocks_have_a_known_language():
    for where, lang, _ in code_blocks():
        assert lang in KNOWN_LANGS, f"{where}: a ```{lang or '(none)'} block: use python (run by the tests), " \
                                    f"bash (commands, not run) or text (output)"


def tiny(code: str) -> str:
    for old, new in TINY:
        code = code.replace(old, new)
    return code


def test_python_examples_run(tmp_path):
    """Every python block of the site and the README, at a tiny scale, each in a fresh
    namespace of one fresh process (one torch import for all)."""
    blocks = [(where, tiny(code)) for where, _, code in code_blocks("python")]
    assert len(blocks) >= 5
    script = tmp_path / "run_examples.py"
    script.write_text(textwrap.dedent("""
        import json, sys, traceback, warnings
        import torch
        torch.set_num_threads(1)
        blocks = json.load(open(sys.argv[1]))
        failed = []
        for i, (where, code) in enumerate(blocks):
            try:
                exec(compile(code, f"<{where} block {i}>", "exec"), {"__name__": "__main__"})
            except Exception:
                failed.append(f"{where}, block {i}:\\n{traceback.format_exc()}")
        print("\\n".join(failed), file=sys.stderr)
        sys.exit(1 if failed else 0)
    """))
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "blocks.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]


def test_shell_examples_name_real_commands():
    from n2n_gym.cli import build_parser

    subcommands = set()
    for action in build_parser()._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            subcommands |= set(action.choices)
    for where, _, code in code_blocks("bash"):
        for sub in re.findall(r"(?:^|[;&|(]\s*|\s)n2n-gym\s+([a-z][\w-]*)", code, flags=re.M):
            assert sub in subcommands, f"{where}: `n2n-gym {sub}` is not a subcommand"
        for module in re.findall(r"python -m (n2n_gym[\w.]*)", code):
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"


# ---------------------------------------------------------------------------- the browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_front_page_screenshot(site, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail("CI=true: no Chromium to look at the built site (apt-get install -y chromium)")
        pytest.skip("no Chromium here (apt-get install -y chromium)")
    from PIL import Image

    shot = tmp_path / "front.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"]
    url = (site / "index.html").as_uri()
    proc = subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot: {proc.stderr[-2000:]}"
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "md-header" in dom and "n2n-gym" in dom  # Material's layout, our title
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 900)
    # Material's header bar in the theme's primary colour (indigo, #3f51b5) across the top:
    # the stylesheet loaded and the layout is the theme's
    header = [img.getpixel((x, 10)) for x in range(0, 1280, 40)]
    indigo = sum(abs(r - 0x3F) + abs(g - 0x51) + abs(b - 0xB5) < 40 for r, g, b in header)
    assert indigo > len(header) // 2, f"no indigo header bar: {header[:6]}"
    # and a page below it: mostly light background with text (many distinct colours)
    body = img.crop((0, 100, 1280, 900))
    colours = body.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the page below the header is nearly blank"
    if os.environ.get("N2N_SCREENSHOT_DIR"):  # to look at it yourself
        shutil.copy(shot, Path(os.environ["N2N_SCREENSHOT_DIR"]) / "front.png")
