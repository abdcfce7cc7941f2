"""Listing from manifests: no torch, broken plugins reported in one line, clashes fail one entry.

Each test installs fake plugin distributions into a temporary folder (a package and a
``.dist-info`` with a ``regzoo.plugins`` entry point) put on ``PYTHONPATH``, and runs the CLI in
a subprocess, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regzoo.catalog import MANIFEST, make_manifest, manifest_path

PACKAGES = (
    "regzoo",
    "regzoo_voxelmorph",
    "regzoo_transmorph",
    "regzoo_istn",
    "regzoo_jssr",
    "regzoo_diffusemorph",
    "regzoo_dualprnet",
    "regzoo_rcn",
    "regzoo_ddir",
    "regzoo_oar",
    "regzoo_deepatlas",
    "regzoo_deeprs",
    "regzoo_jrss",
    "regzoo_tumourreg",
    "regzoo_example",
)


def _install(root: Path, name: str, source: str, manifest: list[dict] | None = None) -> None:
    """A fake distribution ``regzoo-fake-NAME`` whose entry point ``NAME`` is ``regzoo_NAME``."""
    package = root / f"regzoo_{name}"
    if source is not None:
        package.mkdir()
        (package / "__init__.py").write_text(source)
        if manifest is not None:
            data = {"format": "regzoo-manifest-1", "package": package.name, "entries": manifest}
            (package / MANIFEST).write_text(json.dumps(data))
    info = root / f"regzoo_fake_{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: regzoo-fake-{name}\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[regzoo.plugins]\n{name} = regzoo_{name}\n")


def _run(root: Path, *code_or_args: str, python: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = (
        [sys.executable, "-c", code_or_args[0]]
        if python
        else [sys.executable, "-m", "regzoo", *code_or_args]
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=root)


def _model(name: str) -> dict:
    return {"kind": "model", "name": name, "summary": f"{name} for the tests", "tags": ["2d"]}


PLUGIN_SOURCE = """
from regzoo import register_model

@register_model("{shared}", summary="clash")
def shared(width: int = 2):
    import torch
    return torch.nn.Linear(width, width)

@register_model("{own}", summary="own")
def own(width: int = 3):
    import torch
    return torch.nn.Linear(width, width)
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_each_shipped_manifest_is_what_the_code_registers(package):
    path = manifest_path(package)
    assert path is not None and path.is_file(), f"{package} ships no {MANIFEST}"
    shipped = json.loads(path.read_text())
    fresh = json.loads(json.dumps(make_manifest(package), default=str))
    assert shipped == fresh, f"{path} is stale: run python -m regzoo.catalog {package}"
    assert shipped["entries"], f"{package} declares no entries"


def test_list_plugins_and_info_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from regzoo.cli import main\n"
        "for args in (['list'], ['list', '--kind', 'loss', '--json'], ['plugins'],"
        " ['info', 'voxelmorph']):\n"
        "    assert main(args) == 0, args\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'monai') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    res = _run(tmp_path, code, python=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "voxelmorph" in res.stdout and "lncc" in res.stdout


def test_info_params_counts_parameters(tmp_path):
    res = _run(tmp_path, "info", "voxelmorph", "--params", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["parameters"] == {"2d": 109_170, "3d": 327_331}


def test_a_plugin_whose_module_is_missing_is_one_line_from_list(tmp_path):
    _install(tmp_path, "gone", source=None)
    res = _run(tmp_path, "list")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'gone'" in lines[0] and "not found" in lines[0], res.stderr
    assert "voxelmorph" in res.stdout
    res = _run(tmp_path, "plugins")
    assert "gone" in res.stdout and "FAILED" in res.stdout


def test_a_plugin_with_a_broken_manifest_is_one_line_from_list(tmp_path):
    _install(tmp_path, "garbled", "", manifest=None)
    (tmp_path / "regzoo_garbled" / MANIFEST).write_text("{not json")
    res = _run(tmp_path, "list")
    assert res.returncode == 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken manifest" in lines[0], res.stderr


def test_a_model_whose_plugin_raises_on_import_says_which_plugin_and_why(tmp_path):
    _install(
        tmp_path,
        "raises",
        "raise RuntimeError('the plugin needs a newer frobnicator')\n",
        manifest=[_model("raising-model")],
    )
    res = _run(tmp_path, "list")
    assert res.returncode == 0 and "raising-model" in res.stdout  # declared, so listed
    for args in (["train", "raising-model"], ["info", "raising-model"]):
        res = _run(tmp_path, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "plugin 'raises'" in lines[0] and "newer frobnicator" in lines[0], lines[0]
    res = _run(tmp_path, "plugins", "--check")
    assert res.returncode == 1
    assert any("raises" in row and "FAILED" in row for row in res.stdout.splitlines())
    assert any(
        row.startswith("voxelmorph ") and "FAILED" not in row for row in res.stdout.splitlines()
    )


def test_two_plugins_registering_one_name_keep_their_other_entries(tmp_path):
    for name, own in (("dupa", "dupa-model"), ("dupb", "dupb-model")):
        alone = tmp_path / f"alone_{name}"
        alone.mkdir()
        _install(alone, name, PLUGIN_SOURCE.format(shared="shared-model", own=own))
        made = _run(
            alone,
            f"import sys; from regzoo.catalog import _main; sys.exit(_main(['regzoo_{name}']))",
            python=True,
        )
        assert made.returncode == 0, made.stderr
        for item in alone.iterdir():
            item.rename(tmp_path / item.name)
    res = _run(tmp_path, "list")
    assert res.returncode == 0
    assert all(m in res.stdout for m in ("shared-model", "dupa-model", "dupb-model"))
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'shared-model'" in lines[0] and "dupb" in lines[0], res.stderr
    build = _run(
        tmp_path,
        "import regzoo\n"
        "for name in ('dupa-model', 'dupb-model', 'shared-model'):\n"
        "    regzoo.create_model(name)\n"
        "print(regzoo.get_entry('model', 'shared-model').plugin)\n",
        python=True,
    )
    assert build.returncode == 0, build.stderr
    assert build.stdout.strip() == "regzoo-fake-dupa"
    res = _run(tmp_path, "plugins", "--check")
    assert any("dupb" in row and "shared-model" in row for row in res.stdout.splitlines())
