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


def test_the_settings_table_is_the_codes():
    text = (ROOT / "docs" / "settings.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in GROUPS]
    assert table == settings_rows(), "\n".join(settings_rows())


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)  # a # in a code block is no heading
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def test_slugs_are_githubs():
    assert slug("A training copy of the footage: `VIDTRAIN_MODE=prepare`") == \
        "a-training-copy-of-the-footage-vidtrain_modeprepare"
    assert slug("6. Start-up at Kinetics size (2026-12-04)") == "6-start-up-at-kinetics-size-2026-12-04"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    for target, anchor in re.findall(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)", text):
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {target}"
        if anchor:
            assert path.suffix == ".md" and anchor in anchors(path), f"{doc.name}: {target}#{anchor}"


def test_the_order_fixing_settings_are_the_checkpoints():
    """docs/operations.md names the settings a resume may not change, as the checkpoint's fingerprint has them."""
    from vidtrain.checkpoint import ORDER_FIXING

    text = (ROOT / "docs" / "operations.md").read_text()
    paragraph = text.split("The checkpoint also stores a fingerprint of everything", 1)[1]
    paragraph = paragraph.split("the worker\ncount", 1)[0]
    assert re.findall(r"`(\w+)`", paragraph) == [name.upper() for name in ORDER_FIXING]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documents_cite_only_files_of_this_repository(doc):
    text = doc.read_text()
    assert "shared/" not in text and "DESIGN.md" not in text and "image/README" not in text
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


def test_the_flags_the_documents_show_are_the_entrypoints():
    """Every --flag on a command line of `entrypoint.py` in the documents is one --help shows."""
    from vidtrain.settings import GROUPS, flag_text

    known = {"--help"} | {f.strip(",") for fields in GROUPS.values() for field in fields
                          for f in flag_text(field).split(" ") if f.startswith("--")}
    shown = []
    for doc in DOCS:
        for command in re.findall(r"entrypoint\.py((?:[^\n]*\\\n)*[^\n]*)", doc.read_text()):
            shown += [(doc.name, flag) for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", command)]
    assert shown and [s for s in shown if s[1] not in known] == []
