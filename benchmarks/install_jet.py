"""Install jet-for-pytorch (Dangel et al., collapsed Taylor mode) into this Python for the
benchmarks, without its dependencies beyond scipy (torch is already here).

jet-for-pytorch 1.0.0 declares Python >= 3.12. Its only 3.12-only syntax is one PEP 695 alias,
`type PyTree[Leaf] = ...`, used in annotations alone; on an older Python this script installs the
wheel with --ignore-requires-python and replaces that one statement by a subscriptable alias that
annotations accept. Nothing else in jet is changed; on Python >= 3.12 the wheel is installed as is.

    python benchmarks/install_jet.py
"""

import importlib.util
import pathlib
import re
import subprocess
import sys
import tempfile

VERSION = "1.0.0"


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "-d", tmp, f"jet-for-pytorch=={VERSION}")
        (wheel,) = pathlib.Path(tmp).glob("jet_for_pytorch-*.whl")
        pip("install", "--quiet", "scipy")
        pip("install", "--quiet", "--no-deps", "--ignore-requires-python", "--force-reinstall", str(wheel))
    if sys.version_info < (3, 12):
        spec = importlib.util.find_spec("jet")
        utils = pathlib.Path(spec.submodule_search_locations[0]) / "utils.py"
        text = utils.read_text()
        alias = re.compile(r"^type PyTree\[Leaf\] = \(\n.*?\n\)\n", re.S | re.M)
        if alias.search(text):
            shim = ("class _PyTreeAlias:  # Python < 3.12: annotations only (benchmarks/install_jet.py)\n"
                    "    def __getitem__(self, leaf):\n        return Any\n\n\nPyTree = _PyTreeAlias()\n")
            utils.write_text(alias.sub(shim, text, count=1))
    import jet  # noqa: F401  (fails loudly if the install did not work)

    print(f"jet-for-pytorch {VERSION} importable from {sys.executable}")


if __name__ == "__main__":
    main()
