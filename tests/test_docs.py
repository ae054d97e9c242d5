"""Every Python block in the tutorials runs."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
TUTORIALS = ["quickstart.md", "writing_a_rule.md"]


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(name)
    assert blocks, f"{name} has no python blocks"
    namespace = {"__name__": f"tutorial_{name}"}
    for code in blocks:
        exec(compile(code, f"{name}", "exec"), namespace)


def test_index_links_every_doc():
    index = (DOCS / "index.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"({page.name})" in index, page.name
    for target in re.findall(r"\]\(([^)#]+\.md)\)", index):
        assert (DOCS / target).exists(), f"index links missing page {target}"


def test_results_page_covers_every_claim_on_both_data_sets():
    page = (DOCS / "results.md").read_text()
    claims = sorted((DOCS.parent / "experiments" / "claims").glob("c[0-9]*_*.yaml"))
    assert len(claims) == 9
    for claim in claims:
        assert f"experiments/claims/{claim.name}" in page, claim.name
    summary = page.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [
        r
        for r in summary.splitlines()
        if r.startswith("| ") and "claim |" not in r and not r.startswith("| ---")
    ]
    assert len(rows) == 9
    for row in rows:
        verdicts = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(verdicts) == 2, row  # MNIST subset and MNIST-1D
        assert all(
            v in ("held", "did not hold", "inconclusive", "not judged")
            for v in verdicts
        )
    assert "localearn claims" in page


def test_readme_quickstart_has_exactly_two_commands():
    readme = (DOCS.parent / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```\n(.*?)```", quick, re.S)
    assert len(commands) == 2
    assert "experiments/gim_mnist.yaml" in commands[0]
    assert "pytest" in commands[1]
