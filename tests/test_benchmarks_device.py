"""benchmarks/device.py: its roofline's byte count against one made by hand from the model's own
parameter tree and cache, and its reduced form (the CPU's), run whole as a user runs it."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import device
from flowrl_jax.models.decoder import init_cache, param_shapes


def test_decode_bytes_are_the_weights_and_the_filled_cache_of_each_step():
    cfg = device.model_config("tiny", "float32")
    tree = param_shapes(cfg)
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(tree) if "kernel" in str(path)]
    weights = sum(int(np.prod(x.shape)) for x in kernels) * 4  # fp32; the embedding is a lookup
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, 1))
    position = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
    # 4 requests on 2 slots: two waves; 3 new tokens after a 5-token prompt: decode steps feed
    # tokens 0 and 1, with 6 and then 7 positions cached, 2 rows each.
    want = 2 * ((weights + 2 * 6 * position) + (weights + 2 * 7 * position))
    assert device.decode_bytes(cfg, slots=2, requests=4, prompt=5, new=3) == want


def test_the_reduced_run_prints_its_table_and_last_line_and_writes_them(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "argv", ["device", "--reduced", "--out", str(tmp_path)])
    monkeypatch.setattr(device, "TIMED", 1)
    device.main()
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(
        r"device=cpu decode_roofline=\d+\.\d\d mfu_0_5b=\d\.\d\d mfu_1_5b=\d\.\d\d", out[-1]
    ), out[-1]
    saved = json.loads((tmp_path / "device.json").read_text())
    assert saved["summary"] == out[-1]
    rows = [(r["what"], r["attention"]) for r in saved["rows"]]
    # On the CPU every implementation runs: XLA's, and the kernels in Pallas's interpret mode.
    assert rows == [
        ("decode", "xla"),
        ("decode", "pallas_gpu"),
        ("decode", "pallas_tpu"),
        ("update", "xla"),
        ("update", "splash"),
        ("update", "auto"),
        ("rl step", "auto"),
    ]
    for row in saved["rows"]:
        assert row["seconds"] > 0
        assert np.isnan(row["fraction"]) or row["fraction"] > 0
    phases = saved["rows"][-1]["detail"]
    assert re.fullmatch(
        r"rollout [\d.]+ s, reward [\d.]+ s, logprobs [\d.]+ s, update [\d.]+ s", phases
    )
    assert (tmp_path / "device.md").read_text().startswith("device cpu (cpu), float32")
