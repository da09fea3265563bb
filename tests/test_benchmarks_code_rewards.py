"""The code-reward throughput benchmark runs, scores every response right, and stays inside the
issue's bound (sum of time limits / workers) on a reduced batch."""

import sys

import pytest

from benchmarks import code_rewards

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


def test_code_rewards_within_bound(capsys):
    result = code_rewards.main(["--responses", "16", "--workers", "4", "--wall", "1.0"])
    assert result["bound"] == 16 * 10 * 1.0 / 4
    assert result["must"] <= result["total"] < result["bound"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("code_rewards seconds=")
