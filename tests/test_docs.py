"""The documentation's relative links point at files that exist (the README was split into
pages next to what they describe; a moved page must not leave a dead link behind)."""

import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown_files():
  try:
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    out = [str(p.relative_to(REPO)) for p in REPO.rglob("*.md") if ".venv" not in p.parts]
  return sorted(REPO / f for f in out)


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
  dead = []
  for target in LINK.findall(page.read_text(encoding="utf-8")):
    if re.match(r"[a-z]+://|mailto:|#", target):
      continue
    path = target.split("#", 1)[0]
    if path and not (page.parent / path).exists():
      dead.append(target)
  assert not dead, f"{page.relative_to(REPO)} links to missing files: {dead}"


def test_readme_stays_a_tour():
  # The README is what a newcomer opens: reference material lives next to what it describes.
  assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 350
