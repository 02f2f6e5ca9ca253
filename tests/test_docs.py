"""The README and docs/ against what they quote: a table quoted from a file of results/ or benchmarks/ (between
`<!-- FILE: table -->` and `<!-- end -->`) is that file's table, every relative link resolves, and no page names
a path of one machine or words a reader cannot look up."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUOTE = re.compile(r"<!-- (\S+): table -->\n(.*?)<!-- end -->", re.S)


def table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def quotes(source, lines):
    """lines stand, in order and together, somewhere among source's table lines."""
    return any(source[i : i + len(lines)] == lines for i in range(len(source)))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_tables_are_their_files(page):
    for name, quoted in QUOTE.findall(page.read_text()):
        source = table_lines((ROOT / name).read_text())
        lines = table_lines(quoted)
        assert lines, f"{page.name}: an empty quote of {name}"
        assert quotes(source, lines), f"{page.name} quotes {name} wrongly"


def test_a_changed_table_is_caught(tmp_path):
    """The check fails on a quote that differs from its file in one digit."""
    readme = (ROOT / "README.md").read_text()
    name, quoted = QUOTE.findall(readme)[0]
    source = table_lines((ROOT / name).read_text())
    lines = table_lines(quoted)
    changed = lines[:-1] + [lines[-1].replace("0.0", "0.1", 1)]
    assert quotes(source, lines) and not quotes(source, changed)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize(
    "page",
    [*PAGES, *sorted((ROOT / "results").glob("*.md")), *sorted((ROOT / "results").glob("**/*.json"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_machine_paths_or_unresolvable_words(page):
    text = page.read_text()
    assert not re.search(r"(?<![\w.])/(work|root|home|Users)/", text), f"{page.name}: an absolute path of a machine"
    if page.suffix == ".md":
        assert not re.search(r"\b(the issue|this issue|this round|this session|the round)\b", text, re.I), page.name


# A figure the README states, and a file of the repository that carries it (the command's output or record):
# when the file changes, the README must follow.
FIGURES = [
    ("8 min 20 s", "results/main_job_check.md"),
    ("15 min 20 s", "docs/timings.md"),
    ("7.0x", "results/table5_efficiency.md"),
    ("7.3x", "results/table5_efficiency.md"),
    ("−0.0025 ± 0.0030", "results/paired.md"),
    ("−0.0024 ± 0.0028", "results/paired.md"),
    ("+0.0037 ± 0.0042", "results/paired.md"),
    ("4.4 hours", "docs/data.md"),
    ("9.1 hours", "docs/data.md"),
]


def carried(figure, text) -> bool:
    """The figure stands in the text, as written or as a table row writes it (sign, then its error's column)."""
    if figure in text:
        return True
    m = re.fullmatch(r"([−+])(\S+) ± (\S+)", figure)
    return bool(m) and f"{'-' if m[1] == '−' else '+'}{m[2]} | {m[3]}" in text


@pytest.mark.parametrize("figure,source", FIGURES)
def test_readme_figures_are_carried_by_a_file(figure, source):
    readme = (ROOT / "README.md").read_text()
    assert figure in readme or figure.replace(" hours", " h") in readme, f"README no longer states {figure}"
    assert carried(figure, (ROOT / source).read_text()), f"{source} does not carry the README's {figure}"


def test_a_figure_a_file_does_not_carry_is_caught():
    assert carried("−0.0025 ± 0.0030", "| a − b | -0.0025 | 0.0030 | 3 |")
    assert not carried("−0.0025 ± 0.0031", "| a − b | -0.0025 | 0.0030 | 3 |")
