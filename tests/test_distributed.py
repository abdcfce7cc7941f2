"""Data-parallel updates equal one process's: a parameter without a gradient stays where it is.

The checks run inside ``tests/fixtures/ddp_missing_gradients.py`` on two gloo processes.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "fixtures" / "ddp_missing_gradients.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_leave_parameters_without_gradient_and_jssr_stage_2_segmenter_unchanged():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(SCRIPT),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    # The two ranks share one stdout, so their lines may interleave: look for each report, not each line.
    assert sorted(re.findall(r"rank (\d): ok", res.stdout)) == ["0", "1"], res.stdout
