"""The README and docs/ stay true to the tree: links resolve, paths and names exist, the layout covers every folder.

Where it sits: beside the packaging tests; it reads README.md and docs/*.md as text and checks them against the
repository without running anything:
  - every relative link (and its #anchor) leads to an existing file and heading;
  - every capability page exists, is linked from the README and links back to it;
  - the README's layout table has a row for every package folder, every entry-point module and every folder of
    the repository (to the second level, tests/ excepted), and no row for something that is gone;
  - every repository path written in code (`gin/optiml_30b.gin`, `tools/benchmarks/train.py`), every dotted name
    of the package (`optiml_jax.data.metrics`, `models.partitioning.SEQUENCE_PARALLEL_RULES` written in full),
    every grouped gin binding (`PartitioningArgs.mesh_shape`) and every console script names something real.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib
import re
import subprocess

import pytest

from optiml_jax.trainer import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PACKAGE = REPO_ROOT / "optiml_jax"
# One page per capability (issue 11), each linked from the README.
CAPABILITY_PAGES = ("bench.md", "training.md", "evaluation.md", "planning.md", "tpu_pods.md", "t5x.md", "converting.md",
                    "model.md", "benchmarks.md", "reproducing.md")
LAYOUT_HEADING = "## Layout"
# Folders the layout table need not list: caches and build output (also git-ignored), and tests/'s subfolders,
# which mirror the package.
UNLISTED = ("__pycache__", ".egg-info", "build", "dist", "quickstart_out", "device_carry", "gpu_bench_out")

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^()\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:optiml_jax|gin|tasks|tools|tpu_scripts|tests|docs)/[\w./<>{}*,-]*)")
_DOTTED = re.compile(r"(?<![\w.])optiml_jax(?:\.\w+)+")
_GROUP_FIELD = re.compile(r"\b(" + "|".join(cls.__name__ for _, cls in config_lib.GROUPS) + r")\.(\w+)")
_CONSOLE_SCRIPT = re.compile(r"(?<![\w-])(optiml-(?!jax\b)[a-z]+)(?![\w-])")  # optiml-jax: the project


def pages() -> list[pathlib.Path]:
  """README.md, every page of docs/ and the READMEs of the repository's folders (tpu_scripts/README.md)."""
  return [README, *sorted(DOCS.glob("*.md")), *sorted(REPO_ROOT.glob("[!.]*/README.md"))]


def _page_id(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO_ROOT))


def without_code(text: str) -> str:
  """Markdown text without fenced blocks and inline code spans (where brackets are not links)."""
  return _CODE_SPAN.sub("", _FENCE.sub("", text))


def code_of(text: str) -> str:
  """The fenced blocks and inline code spans of a Markdown text, one per line."""
  blocks = [m.group(0) for m in _FENCE.finditer(text)]
  spans = _CODE_SPAN.findall(_FENCE.sub("", text))
  return "\n".join(blocks + spans)


def slug(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = heading.strip().lower().replace("`", "")
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  """The anchors of a Markdown file's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
  seen: dict[str, int] = {}
  out = set()
  for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
    base = slug(heading)
    count = seen.get(base, 0)
    seen[base] = count + 1
    out.add(base if count == 0 else f"{base}-{count}")
  return out


def link_problems(page: pathlib.Path) -> list[str]:
  """Every relative link of `page` whose file or #anchor does not exist, one line each."""
  problems = []
  for target in _LINK.findall(without_code(page.read_text(encoding="utf-8"))):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
      continue
    file_part, _, anchor = target.partition("#")
    linked = (page.parent / file_part).resolve() if file_part else page
    if not linked.exists():
      problems.append(f"{page.name}: link {target!r}: {file_part} does not exist")
    elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
      problems.append(f"{page.name}: link {target!r}: no heading with anchor #{anchor} in {linked.name} "
                      f"(anchors: {sorted(anchors(linked))})")
  return problems


def layout_rows() -> list[str]:
  """The paths in the first column of the README's layout table."""
  text = README.read_text(encoding="utf-8")
  assert LAYOUT_HEADING in text, f"README.md has no {LAYOUT_HEADING!r} section"
  section = text.split(LAYOUT_HEADING, 1)[1].split("\n## ", 1)[0]
  return re.findall(r"^\|\s*`([^`]+)`\s*\|", section, re.M)


def tracked_folders() -> set[str]:
  """Folders of the repository with files in them, as 'a/' and 'a/b/' (git's view when this is a checkout)."""
  try:
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                           timeout=60).stdout.split()
  except (OSError, subprocess.SubprocessError):
    files = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
  folders = set()
  for name in files:
    parts = pathlib.PurePosixPath(name).parts[:-1]
    if not parts or parts[0].startswith(".") or any(u in part for part in parts for u in UNLISTED):
      continue
    folders.add(parts[0] + "/")
    if len(parts) > 1 and parts[0] not in ("tests", "optiml_jax"):
      folders.add(f"{parts[0]}/{parts[1]}/")
  return folders


@functools.cache
def module_names(path: pathlib.Path) -> frozenset[str]:
  """The names a module defines or imports at its top level."""
  names = set()
  for node in ast.parse(path.read_text(encoding="utf-8")).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
  return frozenset(names)


def dotted_name_problem(name: str) -> str | None:
  """None when `optiml_jax.a.b[.attr]` is a module of the package or a top-level name of one, else why not."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    base = REPO_ROOT.joinpath(*parts[:end])
    module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if module.is_file():
      rest = parts[end:]
      if not rest or rest[0] in module_names(module):
        return None
      return f"{name}: {module.relative_to(REPO_ROOT)} defines no {rest[0]!r}"
  return f"{name}: no such module"


def console_scripts() -> set[str]:
  return set(re.findall(r'"(optiml-[a-z]+) = ', (REPO_ROOT / "setup.py").read_text(encoding="utf-8")))


def test_every_page_is_found():
  names = {p.name for p in DOCS.glob("*.md")}
  assert set(CAPABILITY_PAGES) <= names, f"docs/ lacks {sorted(set(CAPABILITY_PAGES) - names)}"


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_every_relative_link_resolves(page):
  assert not link_problems(page), "\n".join(link_problems(page))


def test_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
  (tmp_path / "other.md").write_text("# Other page\n\n## A section: `with code`\n", encoding="utf-8")
  page = tmp_path / "page.md"
  page.write_text(
      "[ok](other.md#a-section-with-code) [top](#title) [gone](missing.md) [bad](other.md#nowhere)\n"
      "`[not a link](missing_in_code.md)`\n```\n[not a link either](missing_in_fence.md)\n```\n# Title\n",
      encoding="utf-8")
  problems = link_problems(page)
  assert len(problems) == 2, problems
  assert "missing.md does not exist" in problems[0]
  assert "#nowhere" in problems[1]


@pytest.mark.parametrize("name", CAPABILITY_PAGES)
def test_each_capability_page_is_linked_from_the_readme_and_links_back(name):
  readme = without_code(README.read_text(encoding="utf-8"))
  assert re.search(rf"\]\(docs/{re.escape(name)}(#[\w-]+)?\)", readme), f"README.md does not link docs/{name}"
  page = without_code((DOCS / name).read_text(encoding="utf-8"))
  assert "](../README.md)" in page, f"docs/{name} does not link back to ../README.md"


def test_layout_table_covers_every_package_folder_and_entry_point():
  rows = set(layout_rows())
  packages = {f"{p.parent.relative_to(REPO_ROOT).as_posix()}/" for p in PACKAGE.rglob("__init__.py")}
  modules = {p.relative_to(REPO_ROOT).as_posix() for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
  missing = sorted((packages | modules) - rows)
  assert not missing, f"README.md's layout table has no row for {missing}"


def test_layout_table_covers_every_folder_of_the_repository():
  missing = sorted(tracked_folders() - set(layout_rows()))
  assert not missing, f"README.md's layout table has no row for {missing}"


def test_layout_table_names_only_what_exists():
  gone = [row for row in layout_rows() if not (REPO_ROOT / row).exists()]
  assert not gone, f"README.md's layout table names paths that do not exist: {gone}"


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_repository_paths_in_code_exist(page):
  code = code_of(page.read_text(encoding="utf-8"))
  missing = sorted({
      path.rstrip(".")
      for path in _REPO_PATH.findall(code)
      if not any(c in path for c in "<{*") and not (REPO_ROOT / path.rstrip(".")).exists()
  })
  assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_dotted_names_of_the_package_exist(page):
  names = set(_DOTTED.findall(page.read_text(encoding="utf-8")))
  problems = sorted(filter(None, map(dotted_name_problem, names)))
  assert not problems, f"{page.name}: " + "; ".join(problems)


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_grouped_gin_bindings_name_real_fields(page):
  groups = {cls.__name__: {f.name for f in dataclasses.fields(cls)} for _, cls in config_lib.GROUPS}
  wrong = sorted({
      f"{group}.{field}" for group, field in _GROUP_FIELD.findall(page.read_text(encoding="utf-8"))
      if field not in groups[group]
  })
  assert not wrong, f"{page.name} binds fields the config groups do not have: {wrong}"


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_console_scripts_exist(page):
  unknown = sorted(set(_CONSOLE_SCRIPT.findall(page.read_text(encoding="utf-8"))) - console_scripts())
  assert not unknown, f"{page.name} names console scripts setup.py does not declare: {unknown}"
