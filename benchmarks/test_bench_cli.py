"""Start-up of the listing commands: ``regzoo list`` and ``regzoo plugins`` beside ``--help``.

Each round runs the command in a fresh interpreter, as a user's shell does; the listing commands
read the installed manifests and import neither the plugins nor torch (goal: under 1 s on 2 cores).
The peak memory recorded is the child's maximum resident set size.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = {
    "regzoo --help": ["--help"],
    "regzoo list": ["list"],
    "regzoo plugins": ["plugins"],
    "regzoo info": ["info", "voxelmorph"],
}
# Prints the child's peak RSS when the CLI exits: VmHWM (KiB), the high-water mark of this process's
# own memory (getrusage's maxrss would include the forking test process's, kept across exec).
RUNNER = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('MAXRSS', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from regzoo.cli import main\n"
    "main(sys.argv[1:])\n"
)


def _run(args: list[str]) -> int:
    res = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return int(res.stderr.rsplit("MAXRSS", 1)[1].split()[0]) * 1024


@pytest.mark.parametrize("impl", list(COMMANDS))
def test_cli_startup(benchmark, request, impl, package_versions):
    args = COMMANDS[impl]
    peak = _run(args)  # warm the file cache; also the peak memory of one run
    benchmark.group = "cli start-up [cpu]"
    benchmark.extra_info.update(
        case="cli start-up",
        impl=impl,
        device="cpu",
        device_name="cpu",
        threads=1,
        versions=package_versions,
        quick=bool(request.config.getoption("--bench-quick")),
        load_average=round(os.getloadavg()[0], 2),
        peak_bytes=peak,
        **{"pass": "command"},
    )
    rounds = request.config.getoption("--bench-rounds")
    benchmark.pedantic(lambda: _run(args), rounds=rounds, iterations=1, warmup_rounds=0)
