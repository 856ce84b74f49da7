"""Chapters 08 and 09's benchmark script runs end to end on a tiny subset and prints ratios against its own baseline."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fast_generation.py"


def test_fast_generation_bench_quick(capsys):
    spec = importlib.util.spec_from_file_location("fast_generation_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.main(["--quick", "--every", "135"])                       # 2 captions
    out = capsys.readouterr().out
    assert table[0]["name"].startswith("DDPM-50 fp32 (baseline)") and table[0]["speedup"] == 1.0
    names = [r["name"] for r in table]
    for want in ("DDIM-1", "DPM-Solver++(2M)-4", "DPM++-4 guidance batched", "DPM++-4 guidance sequential",
                 "DPM++-4 guidance off", "DPM++-4 channels-last"):
        assert want in names, want
    assert all(r["speedup"] > 1 for r in table if r["name"].startswith(("DDIM-", "DPM-Solver")))
    assert "speed-up" in out and "benchmark took" in out
