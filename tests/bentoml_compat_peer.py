"""Run tests/test_bentoml_compat.py against real BentoML, to check that each port passes there.

The file is copied with `torchshelf` swapped back to `bentoml` in its import lines (nothing else
changes) and run by the BentoML peer venv's Python, with a conftest that gives every test an empty
`ModelStore`, as the torchshelf run gives every test an empty store. Not part of the suite (the
peer venv and BentoML are not test dependencies); run it by hand:

    pip install --target /tmp/pytest-for-bento pytest       # the peer venv has no pytest
    python tests/bentoml_compat_peer.py --pytest-path /tmp/pytest-for-bento

Expected: the ported tests pass, `different_on_purpose` ones pass too (they hold on BentoML),
`torchshelf_only` ones are skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PEER = Path("~/.cache/torchshelf-peers/bentoml/bin/python").expanduser()

CONFTEST = """
import pytest


@pytest.fixture(autouse=True)
def _bentoml_store(tmp_path):
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    root = tmp_path / "bentoml-models"
    root.mkdir()
    BentoMLContainer.model_store.set(ModelStore(root))
    yield
    BentoMLContainer.model_store.reset()
"""


def ported_source(text: str) -> str:
    """The test file with its import lines pointing at `bentoml` again."""
    return re.sub(r"^(import|from) torchshelf\b", r"\1 bentoml", text, flags=re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=PEER, help="the BentoML venv's python")
    parser.add_argument("--pytest-path", help="a directory holding pytest, for a peer without it")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k store)")
    args = parser.parse_args()
    source = Path(__file__).with_name("test_bentoml_compat.py").read_text()
    with tempfile.TemporaryDirectory(prefix="bentoml-compat-") as tmp:
        Path(tmp, "test_bentoml_compat.py").write_text(ported_source(source))
        Path(tmp, "conftest.py").write_text(CONFTEST)
        env = dict(os.environ, BENTOML_HOME=str(Path(tmp, "bentoml-home")))
        if args.pytest_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.pytest_path, tmp]))
        cmd = [str(args.python), "-m", "pytest", "-q", "-rxXs", "-p", "no:cacheprovider", tmp]
        return subprocess.call([*cmd, *args.pytest_args], env=env, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())
