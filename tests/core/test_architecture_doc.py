"""docs/architecture.md links each step of its walks to a file and line: every link must land on the name it
shows (a def, a class or an assignment of that name), so the map cannot drift from the code unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[`([\w.]+)`\]\(\.\./([\w/]+\.py)#L(\d+)\)")


def test_every_link_lands_on_its_name():
    text = (REPO / "docs" / "architecture.md").read_text()
    links = LINK.findall(text)
    assert len(links) >= 25, "the walks link each step"
    wrong = []
    for shown, path, line in links:
        name = shown.rsplit(".", 1)[-1]
        source = (REPO / path).read_text().splitlines()
        at = source[int(line) - 1] if int(line) <= len(source) else ""
        if not re.search(rf"(def|class) {re.escape(name)}\b", at):
            wrong.append(f"{path}:{line} does not define {name}: {at.strip()!r}")
    assert not wrong, "\n".join(wrong)


def test_every_linked_file_exists_and_the_map_names_real_folders():
    text = (REPO / "docs" / "architecture.md").read_text()
    for path in {p for _, p, _ in LINK.findall(text)}:
        assert (REPO / path).is_file(), path
    for folder in re.findall(r"^\| `([\w/]+/)` \|", text, re.M):
        assert (REPO / folder).is_dir(), folder


if __name__ == "__main__":  # python -m tests.core.test_architecture_doc: move each link to where its name is now
    doc = REPO / "docs" / "architecture.md"

    def relink(match: re.Match) -> str:
        shown, path, line = match.groups()
        name = shown.rsplit(".", 1)[-1]
        source = (REPO / path).read_text().splitlines()
        found = [i + 1 for i, text in enumerate(source) if re.search(rf"(def|class) {re.escape(name)}\b", text)]
        if len(found) != 1:
            raise SystemExit(f"{path}: {len(found)} definitions of {name}; fix the link by hand")
        return f"[`{shown}`](../{path}#L{found[0]})"

    doc.write_text(LINK.sub(relink, doc.read_text()))
