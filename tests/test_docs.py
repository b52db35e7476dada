"""The documents tell the truth about the code and stand on their own."""

import re
from pathlib import Path

import pytest

from vidtrain.settings import GROUPS, Settings, default_text, plain_type, variable

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def settings_rows() -> list[str]:
    """The README's settings table, as the code defines the settings."""
    rows = []
    for group, fields in GROUPS.items():
        for field in fields:
            cells = [group, f"`{variable(field)}`", plain_type(field), default_text(field),
                     Settings.model_fields[field].description]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def test_every_setting_is_in_one_group():
    grouped = [f for fields in GROUPS.values() for f in fields]
    assert sorted(grouped) == sorted(Settings.model_fields) and len(grouped) == len(set(grouped))


def test_the_readme_settings_table_is_the_codes():
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in GROUPS]
    assert table == settings_rows(), "\n".join(settings_rows())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documents_cite_only_files_of_this_repository(doc):
    text = doc.read_text()
    assert "shared/" not in text and "DESIGN.md" not in text and "image/README" not in text
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative markdown links
        assert (doc.parent / target).exists(), target
    for name in re.findall(r"`([\w./-]+\.(?:md|py|sh|yaml|txt|conf|Containerfile))`", text):
        if "/" in name or name.endswith(".md"):
            candidates = [ROOT / name, doc.parent / name] + list(ROOT.glob(f"**/{Path(name).name}"))
            assert any(c.exists() for c in candidates if ".venv" not in str(c)), name


def test_code_cites_no_file_outside_the_repository():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py"), ROOT / "Dockerfile", ROOT / "Makefile",
                 *ROOT.glob("k8s/**/*.yaml"), *ROOT.glob("image/*")]:
        if ".venv" in str(path) or path.name == "test_docs.py":
            continue
        text = path.read_text()
        assert "DESIGN.md" not in text and "shared/" not in text and "image/README" not in text, path
