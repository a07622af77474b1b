"""The configuration files shipped with the package: the gin files and the bench definitions.

Where it sits: a leaf that imports nothing of the package. The gin lookup (`gin_utils`), the toy bench
(`data.toybench`) and the bench CLI (`bench`) ask it where the shipped files are.

The repository keeps them at its top level, `gin/` (with `models/`, `t5x/` and `t5x/models/`) and `tasks/`;
setup.py's `package_dir` maps those folders into the wheel as `optiml_jax/gin/` and `optiml_jax/tasks/`.
So the files are found
  - in an installed wheel: inside the package, through `importlib.resources`;
  - in an editable install (`make install`, `pip install -e .`) or a source checkout: the package folder
    has no `gin/` or `tasks/`, and they are read from the checkout's top level, the folders the wheel is
    built from (editable installs cannot map a data folder that sits outside the package).
The package must be installed as files (not imported from a zip archive): gin and the tokenizer read real paths.

From the shell (e.g. for t5x: `python -m t5x.train --gin_search_paths=$(python -m optiml_jax.resources gin)`):

  python -m optiml_jax.resources gin     # prints the shipped gin folder
  python -m optiml_jax.resources tasks   # prints the shipped bench definitions folder
"""

from __future__ import annotations

import importlib.resources
import pathlib
import sys
from typing import Sequence

GIN = "gin"  # repository folder gin/  -> optiml_jax/gin/ in the wheel
TASKS = "tasks"  # repository folder tasks/ -> optiml_jax/tasks/ in the wheel
FOLDERS = (GIN, TASKS)


class ResourceError(FileNotFoundError):
  """A shipped folder or file is missing; the message names it and where it was looked for."""


def _checkout_root() -> pathlib.Path:
  return pathlib.Path(__file__).resolve().parent.parent


def folder(name: str) -> pathlib.Path:
  """The shipped folder `name` (GIN or TASKS): inside the installed package, else the checkout's top level."""
  if name not in FOLDERS:
    raise ValueError(f"unknown resource folder {name!r}: expected one of {', '.join(FOLDERS)}")
  shipped = importlib.resources.files("optiml_jax").joinpath(name)
  if shipped.is_dir():
    if not isinstance(shipped, pathlib.Path):
      raise ResourceError(f"optiml_jax/{name}/ is inside an archive ({shipped}); install optiml-jax as files "
                          "(pip install), not as a zip")
    return shipped
  checkout = _checkout_root() / name
  if checkout.is_dir():
    return checkout
  raise ResourceError(f"the {name}/ folder of optiml-jax is missing: looked in {shipped} (installed wheel) and "
                      f"{checkout} (checkout); reinstall the package")


def gin_dir() -> pathlib.Path:
  """The shipped gin folder (run files, models/, t5x/)."""
  return folder(GIN)


def tasks_dir() -> pathlib.Path:
  """The shipped bench definitions folder (optiml_bench.yaml, toybench.yaml)."""
  return folder(TASKS)


def task_file(name: str) -> pathlib.Path:
  """The shipped bench definition `name` (e.g. "toybench.yaml")."""
  path = tasks_dir() / name
  if not path.is_file():
    shipped = sorted(p.name for p in tasks_dir().glob("*.yaml"))
    raise ResourceError(f"no bench definition {name!r} in {tasks_dir()} (shipped: {', '.join(shipped)})")
  return path


def find_task_file(name: str) -> pathlib.Path:
  """A bench definition given on a command line: the path as given, else the shipped file of that name.

  `tasks/optiml_bench.yaml` (the checkout's path) and `optiml_bench.yaml` both find the shipped file from any
  working directory. Raises ResourceError naming both places when neither holds it.
  """
  given = pathlib.Path(name)
  if given.is_file():
    return given
  if given.is_absolute():
    raise ResourceError(f"bench definition {name!r} not found")
  parts = given.parts
  shipped = tasks_dir() / (pathlib.Path(*parts[1:]) if len(parts) > 1 and parts[0] == TASKS else given)
  if shipped.is_file():
    return shipped
  raise ResourceError(f"bench definition {name!r} not found (looked at {given.resolve()} and {shipped})")


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if len(args) != 1 or args[0] not in FOLDERS:
    print(f"usage: python -m optiml_jax.resources {{{','.join(FOLDERS)}}}", file=sys.stderr)
    return 2
  try:
    print(folder(args[0]))
  except ResourceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
