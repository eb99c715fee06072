"""The size-caching CPU allocator: correct memory, reuse by size, a bounded cache, opt-outs.

Installing it changes the allocator of the whole process, so every check runs in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from spikingresformer import allocator


def _child(code: str, **env: str) -> dict:
    full_env = {**os.environ, **env}
    for name in ("SPIKINGRESFORMER_MALLOC",):
        if name not in env:
            full_env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_install_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_bytes"):
        allocator.install(min_bytes=10)
    with pytest.raises(ValueError, match="slack_bytes"):
        allocator.install(slack_bytes=-1)


def test_blocks_are_reused_by_size_and_the_mapped_total_is_bounded():
    out = _child("""
        import json, torch
        from spikingresformer import allocator
        allocator.install(min_bytes=1 << 20, slack_bytes=8 << 20)
        ok = True
        for round in range(3):
            ts = [torch.full((n,), float(n), dtype=torch.float32) for n in (10, 300_000, 1_000_000, 3_000_000)]
            ok = ok and all(bool((t == float(t.numel())).all()) for t in ts)
            del ts
        big = [torch.ones(4_000_000) for _ in range(4)]  # 16 MB each
        held = allocator.stats()
        del big
        after = allocator.stats()
        other = [torch.ones(5_000_000) for _ in range(4)]  # a new size: the 16 MB blocks must make room
        final = allocator.stats()
        print(json.dumps(dict(ok=ok, held=held, after=after, final=final)))
    """)
    assert out["ok"]
    assert out["after"]["reused"] >= 4  # the 1.2 MB and 4 MB blocks came back in rounds 2 and 3
    assert out["held"]["live_bytes"] >= 4 * 16_000_000
    assert out["after"]["live_bytes"] == 0 and out["after"]["cached_bytes"] >= 4 * 16_000_000  # kept for reuse
    final = out["final"]
    peak_live = max(out["held"]["live_bytes"], final["live_bytes"])
    assert final["live_bytes"] + final["cached_bytes"] <= peak_live + (8 << 20) + (2 << 20)
    assert final["returned"] >= 3  # cached blocks went back to the system to make room


def test_training_step_is_unchanged_by_the_allocator():
    code = """
        import json, os, torch, torch.nn.functional as F
        import spikingresformer as sr
        from spikingresformer import allocator
        if os.environ.get("USE_CACHE") == "1":
            allocator.install(min_bytes=64 << 10, slack_bytes=32 << 20)
        torch.manual_seed(0)
        m = sr.SpikingResformer(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16,
                                num_classes=10, group_size=16, T=2)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
        losses = []
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(m(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
        print(json.dumps(dict(losses=losses, stats=allocator.stats())))
    """
    plain = _child(code, USE_CACHE="0")
    cached = _child(code, USE_CACHE="1")
    assert cached["losses"] == plain["losses"]
    assert cached["stats"]["reused"] > 0 and plain["stats"]["reused"] == 0


@pytest.mark.parametrize("choice,expect_cache", [("tuned", True), ("glibc", False), ("system", False)])
def test_apply_defaults_installs_it_unless_told_not_to(choice, expect_cache):
    out = _child("""
        import json
        from spikingresformer import allocator, runtime
        runtime.apply_defaults()
        print(json.dumps(dict(installed=allocator.installed(), status=runtime.malloc_settings())))
    """, SPIKINGRESFORMER_MALLOC=choice)
    assert out["installed"] is expect_cache, out["status"]
    assert ("size-caching" in out["status"]) is expect_cache


def test_forked_children_allocate_and_free():
    out = _child("""
        import json, os, torch
        from spikingresformer import allocator
        allocator.install(min_bytes=1 << 20, slack_bytes=8 << 20)
        keep = torch.ones(3_000_000)
        codes = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # the child (one thread, as DataLoader workers run): allocate, free, leave
                torch.set_num_threads(1)
                t = torch.full((3_000_000,), 2.0) + keep
                os._exit(0 if bool((t == 3.0).all()) and allocator.stats()["live_bytes"] > 0 else 3)
            codes.append(os.waitpid(pid, 0)[1])
        print(json.dumps(dict(codes=codes, ok=bool((keep == 1).all()))))
    """)
    assert out["codes"] == [0, 0, 0] and out["ok"]
