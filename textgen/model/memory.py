"""How much memory this process may use, and how many tokens of KV cache fit in it (MAX_BATCH_TOTAL_TOKENS's
default). Read like threads.py reads the CPU quota: a container's cgroup limit, v2 or v1, else the machine's RAM.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)

# What the budget leaves aside, as a share of the limit: the activations of a prefill chunk (attention
# scores grow with the context), the logits, the gunicorn master, the HTTP threads, the allocator's slack.
MARGIN_SHARE = 0.25


def memory_limit(
    cgroup_v2_memory_max: str = "/sys/fs/cgroup/memory.max",
    cgroup_v1_dir: str = "/sys/fs/cgroup/memory",
) -> int:
    """Bytes this process may use: its cgroup's memory limit, v2 (`memory.max`) or v1
    (`memory.limit_in_bytes`), never more than the machine's physical RAM (an unlimited v1 cgroup reads
    as ~2^63, v2 as "max")."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit(cgroup_v2_memory_max, cgroup_v1_dir)
    return ram if limit is None else min(ram, limit)


def _cgroup_limit(v2_memory_max: str, v1_dir: str) -> Optional[int]:
    try:
        with open(v2_memory_max) as f:
            value = f.read().strip()
        return None if value == "max" else int(value)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(v1_dir, "memory.limit_in_bytes")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def resident_bytes(statm: str = "/proc/self/statm") -> int:
    """The process's resident memory now (0 where /proc is missing)."""
    try:
        with open(statm) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def default_batch_total_tokens(token_bytes: int, set_aside_bytes: int, limit: int, resident: int) -> int:
    """MAX_BATCH_TOTAL_TOKENS's default: the memory left once the model is loaded (`limit` - `resident`),
    less what is `set_aside` (the prefix cache) and a margin of MARGIN_SHARE of the limit, in tokens of
    `token_bytes` (KVCache.bytes_per_token). At least 1: a limit the model alone fills still starts, and
    every prompt is refused with the budget named rather than the process killed."""
    free = limit - resident - set_aside_bytes - int(limit * MARGIN_SHARE)
    return max(1, free // token_bytes)


def batch_total_tokens(configured: Optional[int], token_bytes: int, set_aside_tokens: int) -> int:
    """MAX_BATCH_TOTAL_TOKENS as set, or derived from this process's memory (and logged either way);
    `set_aside_tokens`: KV memory kept outside the batch (the prefix cache's)."""
    set_aside_bytes = set_aside_tokens * token_bytes
    if configured is not None:
        log.info("KV-cache budget: %d tokens (MAX_BATCH_TOTAL_TOKENS), %d MiB", configured, configured * token_bytes >> 20)
        return configured
    limit, resident = memory_limit(), resident_bytes()
    tokens = default_batch_total_tokens(token_bytes, set_aside_bytes, limit, resident)
    log.info(
        "KV-cache budget: %d tokens (%d MiB at %d bytes a token) = memory limit %d MiB - %d MiB held after load"
        " - %d MiB prefix cache - %d%% margin; set MAX_BATCH_TOTAL_TOKENS to choose",
        tokens, tokens * token_bytes >> 20, token_bytes, limit >> 20, resident >> 20, set_aside_bytes >> 20, MARGIN_SHARE * 100,
    )
    return tokens
