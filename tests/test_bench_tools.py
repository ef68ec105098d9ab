"""The pure logic bench/run.py adds to devtools/: summed PSS from /proc/<pid>/smaps_rollup, the systems
measured for each --model, the long prompts of the first-token row, and the medians over passes."""

import os

import pytest

from devtools.bench_models import PRESETS, BenchModel, choose_systems, long_prompt
from devtools.benchmark import median_rows, smaps_pss, summed_pss

ROLLUP = """55d0a0a00000-7ffc1c1f0000 ---p 00000000 00:00 0                          [rollup]
Rss:              {rss} kB
Pss:              {pss} kB
Pss_Dirty:          100 kB
Pss_Anon:           {pss} kB
Shared_Clean:       500 kB
"""


def fake_proc(tmp_path, pss_by_pid):
    for pid, pss in pss_by_pid.items():
        os.makedirs(tmp_path / str(pid))
        if pss is not None:
            (tmp_path / str(pid) / "smaps_rollup").write_text(ROLLUP.format(rss=pss * 3, pss=pss))
    return str(tmp_path)


def test_pss_is_read_from_its_own_line_not_rss_or_pss_anon():
    assert smaps_pss(ROLLUP.format(rss=900, pss=300)) == 300 * 1024
    with pytest.raises(ValueError):
        smaps_pss("Rss: 12 kB\n")


def test_pss_is_summed_over_the_tree(tmp_path):
    proc = fake_proc(tmp_path, {101: 1000, 102: 250_000})
    assert summed_pss([101, 102], proc) == 251_000 * 1024


def test_a_process_gone_meanwhile_counts_nothing(tmp_path):
    proc = fake_proc(tmp_path, {101: 1000})
    assert summed_pss([101, 999], proc) == 1000 * 1024


def test_an_unreadable_rollup_gives_no_figure_rather_than_a_partial_sum(tmp_path):
    proc = fake_proc(tmp_path, {101: 1000, 102: None})  # process there, no smaps_rollup (old kernel)
    assert summed_pss([101, 102], proc) is None


def test_each_model_has_its_preset_and_arguments_override_it():
    smol = BenchModel("smollm2", "/m", "real", *PRESETS["smollm2"])
    llama = BenchModel("llama-3.2-1b", "/m", "random", *PRESETS["llama-3.2-1b"])
    assert choose_systems(smol) == (["service-int8"], "q8_0")
    assert choose_systems(llama) == (["service-int4"], "q4_0")
    assert choose_systems(llama, ["service-int8", "service-fp32"], "q8_0") == (["service-int8", "service-fp32"], "q8_0")
    assert "naive" in choose_systems(BenchModel("random", "/m", "random", *PRESETS["random"]))[0]


def test_long_prompts_differ_from_their_first_word():
    first, second = long_prompt(0), long_prompt(1)
    assert first.split()[:3] != second.split()[:3]
    assert first.split()[3:] == second.split()[3:]
    assert 2_500 < len(first) < 4_000  # ~600 tokens of English (~4-5 characters a token)


def test_passes_are_reduced_to_medians_per_system_and_level():
    rows = [
        {"system": "a", "clients": 1, "tokens_per_s": v, "pss_mb": p, "pass": i}
        for i, (v, p) in enumerate([(10.1, 300), (30.0, None), (20.2, 321)])
    ] + [{"system": "a", "clients": 8, "tokens_per_s": 80.0, "pss_mb": 400, "pass": 0},
         {"system": "b", "clients": 1, "tokens_per_s": 5.0, "pss_mb": None, "pass": 0}]
    merged = median_rows(rows, ("system", "clients"), ("tokens_per_s", "pss_mb"))
    assert merged == [
        {"system": "a", "clients": 1, "tokens_per_s": 20.2, "pss_mb": 310.5, "passes": 3},
        {"system": "a", "clients": 8, "tokens_per_s": 80.0, "pss_mb": 400, "passes": 1},
        {"system": "b", "clients": 1, "tokens_per_s": 5.0, "pss_mb": None, "passes": 1},
    ]
