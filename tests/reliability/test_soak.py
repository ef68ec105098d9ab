"""Soak: scripts/soak.py for SOAK_SECONDS (60 by default) against its own gunicorn on the tiny model.

Mixed traffic (plain, streams, abandoned streams, invalid requests, 429 bursts): no 5xx, no transport
error, no broken stream, no slot left in use, a clean exit, and RSS within 5% of its value after the
warm-up (the first 15 s). The 10-minute run: `python scripts/soak.py --model-dir DIR --duration 600`.
"""

import json
import os
import subprocess
import sys

from devtools.servers import ROOT

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))


def test_soak(tiny_model_dir, tmp_path):
    summary_path = tmp_path / "soak.json"
    warmup = min(15.0, SOAK_SECONDS / 4)
    args = [
        sys.executable,
        os.path.join(ROOT, "scripts", "soak.py"),
        "--model-dir",
        tiny_model_dir,
        "--duration",
        str(SOAK_SECONDS),
        "--warmup",
        str(warmup),
        "--clients",
        "8",
        "--max-growth",
        "5",
        "--server-log",
        str(tmp_path / "server.log"),
        "--json-out",
        str(summary_path),
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=SOAK_SECONDS + 180)
    assert summary_path.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    print("soak", json.dumps({k: v for k, v in summary.items() if k != "examples"}))
    artifacts = os.environ.get("TEST_ARTIFACTS") or os.path.join(ROOT, "test-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    with open(os.path.join(artifacts, "reliability-soak.json"), "w") as f:
        json.dump(summary, f, indent=2)

    assert summary["5xx"] == 0, summary["examples"]
    assert summary["transport_errors"] == {} and summary["unexpected"] == 0, summary["examples"]
    assert summary["broken_streams"] == 0 and summary["slots_in_use_after"] == 0
    assert summary["rss_growth_percent"] is not None and summary["rss_growth_percent"] <= 5.0, summary["rss_mb"]
    assert summary["server_exit_code"] == 0 and len(summary["worker_pids"]) == 1
    # The mix really happened: every kind was sent, invalid ones were refused, bursts provoked 429s.
    kinds = summary["by_kind"]
    assert set(kinds) == {"plain", "stream", "cancelled", "invalid", "burst"}
    assert all(kinds[k].get("200", 0) > 0 for k in ("plain", "stream", "cancelled"))
    assert set(kinds["invalid"]) <= {"400", "422"}
    assert kinds["burst"].get("429", 0) > 0
    assert done.returncode == 0, summary["failures"]
