"""The real engine on the tiny model: correctness against transformers, isolation, limits, cancellation."""

import os
import time

import pytest
import torch

from devtools.servers import wait_until
from tests.batching import DecodeSteps, assert_decoded_together, submit_together
from textgen.engine import GenerationResult, TokenEvent
from textgen.errors import Cancelled, Overloaded, QueueTimeout, Unavailable, ValidationError
from textgen.validation import validate_generate


def request(settings, prompt="Hello world", stream=False, **parameters):
    return validate_generate({"inputs": prompt, "parameters": parameters}, settings, stream=stream)


def run(engine, prompt="Hello world", **parameters):
    return engine.submit(request(engine.settings, prompt, **parameters)).result()


def hf_generate(reference, prompt, **kwargs):
    """What transformers' own `generate` produces, for comparison."""
    model, tokenizer = reference
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, pad_token_id=tokenizer.eos_token_id, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), out.shape[1] - ids.shape[1]


@pytest.fixture
def reference(reference_model, loaded):
    return reference_model, loaded[1]


@pytest.mark.parametrize("prompt", ["Hello world", "Technology and finance", "A"])
def test_greedy_matches_transformers_generate(engine, reference, prompt):
    expected, n = hf_generate(reference, prompt, max_new_tokens=24, do_sample=False)
    result = run(engine, prompt, max_new_tokens=24, do_sample=False)
    assert result.text == expected
    assert result.generated_tokens == n


def test_repetition_penalty_matches_transformers(engine, reference):
    expected, _ = hf_generate(reference, "Hello world", max_new_tokens=24, do_sample=False, repetition_penalty=1.8)
    plain = run(engine, max_new_tokens=24, do_sample=False)
    penalised = run(engine, max_new_tokens=24, do_sample=False, repetition_penalty=1.8)
    assert penalised.text == expected
    assert penalised.text != plain.text


def test_same_seed_same_text_and_different_seeds_differ(engine):
    a = run(engine, max_new_tokens=30, seed=7, temperature=1.0)
    b = run(engine, max_new_tokens=30, seed=7, temperature=1.0)
    c = run(engine, max_new_tokens=30, seed=8, temperature=1.0)
    assert a.text == b.text and a.seed == 7
    assert a.text != c.text


def test_unseeded_sampling_reports_the_seed_it_drew(engine):
    first = run(engine, max_new_tokens=20, do_sample=True)
    assert isinstance(first.seed, int)
    again = run(engine, max_new_tokens=20, do_sample=True, seed=first.seed)
    assert again.text == first.text


def test_greedy_reports_no_seed(engine):
    assert run(engine, max_new_tokens=3, do_sample=False).seed is None


def test_seeded_request_is_the_same_alone_and_batched(make_engine):
    engine = make_engine(max_batch_size=16)
    bodies = [dict(prompt=f"Hello {'world ' * i}", max_new_tokens=10 + 3 * i, seed=100 + i) for i in range(6)]
    bodies += [dict(prompt=f"The quick {'brown ' * i}", max_new_tokens=20 - i, do_sample=False) for i in range(4)]
    bodies += [dict(prompt="Finance", max_new_tokens=15, seed=5, top_p=0.9, typical_p=0.95, top_k=20)]
    requests = [request(engine.settings, **b) for b in bodies]
    with DecodeSteps(engine) as steps:
        alone = [engine.submit(r).result() for r in requests]
        assert set(steps.rows) == {1}  # one after the other: every decode step had one row
        handles = submit_together(engine, steps, requests)  # all of them waiting at once
        together = [h.result() for h in handles]
    assert together == alone
    # They really were decoded together: the first decode step carried all 11, and every later one each
    # request not finished yet (a regression to one row at a time, or to one group each, fails here).
    assert steps.rows[0] == len(bodies)
    assert_decoded_together(steps.rows, together)
    # Each got its own length: max_new_tokens honoured per request (unless EOS came first).
    for body, result in zip(bodies, together):
        assert result.generated_tokens == body["max_new_tokens"] or result.finish_reason == "eos_token"


def test_prompts_prefilled_together_match_alone(make_engine, monkeypatch):
    """Continuous batching: prompts that arrive while a request decodes are prefilled together in one
    forward pass (on ONNX, the running request's decode pass), then join it at its next decode step,
    whatever position it has reached; seeds keep their text."""
    engine = make_engine(max_batch_size=16)
    bodies = [dict(prompt="Hi" + " there" * i, max_new_tokens=12, seed=i) for i in range(5)]
    bodies.append(dict(prompt="Technology and finance meet where", max_new_tokens=12, do_sample=False))
    requests = [request(engine.settings, **b) for b in bodies]
    alone = [engine.submit(r).result() for r in requests]

    prefill_batches = []
    real_forward = engine.model.forward

    def counting(tokens, *args, **kwargs):
        if tokens.shape[1] > 1:
            prefill_batches.append(tokens.shape[0])
        return real_forward(tokens, *args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    busy_request = request(engine.settings, max_new_tokens=40, do_sample=False)
    busy = []
    with DecodeSteps(engine) as steps:
        # Held in `busy`'s first decode step: what arrives meanwhile waits for the next iteration together.
        with steps.hold(start=lambda: busy.append(engine.submit(busy_request))):
            handles = [engine.submit(r) for r in requests]
        together = [h.result() for h in handles]
        busy_result = busy[0].result()
    assert together == alone
    packs = engine.model.packs_tokens  # ONNX: the prompts ride in `busy`'s decode pass (and busy decodes alone in it)
    assert prefill_batches[-1] == len(bodies) + packs  # all six prompts in one forward pass
    # Then every decode step carried `busy` (2 tokens in at the release, 3 after a shared pass) and each
    # of the six not finished.
    busy_left = busy_result.generated_tokens - 2 - packs
    longest = max([busy_left] + [r.generated_tokens - 1 for r in together])
    expected = [(busy_left >= s) + sum(r.generated_tokens > s for r in together) for s in range(1, longest + 1)]
    assert steps.rows == [1] * packs + expected and expected[0] == 1 + len(bodies), (steps.rows, busy_result)


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = run(engine, max_new_tokens=20, do_sample=False)
    assert run(engine, max_new_tokens=20, do_sample=True, top_k=1, seed=1).text == greedy.text
    assert run(engine, max_new_tokens=20, do_sample=True, top_p=1e-6, seed=2).text == greedy.text


def test_stop_sequence_cuts_the_text_before_it(engine):
    varied = dict(max_new_tokens=40, do_sample=False, repetition_penalty=1.8)
    full = run(engine, **varied).text
    stop = full[15:18]
    assert len(stop) == 3 and full.index(stop) >= 1
    result = run(engine, **varied, stop=["never-there", stop])
    assert result.finish_reason == "stop_sequence"
    assert result.text == full[: full.index(stop)]
    assert result.generated_tokens < 40


def test_length_finish(engine):
    result = run(engine, max_new_tokens=5, do_sample=False)
    assert (result.finish_reason, result.generated_tokens) == ("length", 5)


def test_eos_finish(make_engine):
    engine = make_engine()
    first_token = engine.submit(request(engine.settings, max_new_tokens=5, do_sample=False, stream=True))
    tokens = [e.id for e in first_token.events() if isinstance(e, TokenEvent)]
    engine.eos_token_ids = {tokens[2]}  # a model whose EOS is the third token it generates
    result = run(engine, max_new_tokens=5, do_sample=False)
    assert result.finish_reason == "eos_token"
    assert result.generated_tokens == tokens.index(tokens[2]) + 1


def test_truncate_keeps_the_last_prompt_tokens(engine, loaded, reference):
    _, tokenizer = loaded
    prompt = "Hello world, " * 20
    ids = tokenizer(prompt)["input_ids"]
    result = run(engine, prompt, max_new_tokens=8, do_sample=False, truncate=6)
    assert result.prompt_tokens == 6
    expected, _ = hf_generate(reference, tokenizer.decode(ids[-6:]), max_new_tokens=8, do_sample=False)
    assert result.text == expected


def test_token_limits_need_the_tokenizer(make_engine, loaded):
    _, tokenizer = loaded
    engine = make_engine(max_input_tokens=10, max_total_tokens=30)
    long_prompt = "Hello world " * 20
    n = len(tokenizer(long_prompt)["input_ids"])
    with pytest.raises(ValidationError, match=f"`inputs` must have less than 10 tokens. Given: {n}"):
        engine.submit(request(engine.settings, long_prompt, max_new_tokens=5))
    with pytest.raises(ValidationError, match="must be <= 30"):
        engine.submit(request(engine.settings, "Hello", max_new_tokens=29))
    assert engine.stats()["admitted"] == 0


def test_total_tokens_never_exceed_the_model_context(make_engine):
    engine = make_engine(max_total_tokens=10**6, max_new_tokens_limit=10**6)
    assert engine.max_total_tokens == 256  # the tiny model's n_positions
    assert engine.max_input_tokens == 255


def test_a_stream_gets_token_events_then_the_result(engine):
    handle = engine.submit(request(engine.settings, max_new_tokens=6, do_sample=False, stream=True))
    events = list(handle.events())
    tokens, result = events[:-1], events[-1]
    assert [e.index for e in tokens] == [1, 2, 3, 4, 5, 6]
    assert [e.last for e in tokens] == [False] * 5 + [True]
    assert all(isinstance(e.logprob, float) and e.logprob <= 0 for e in tokens)
    assert isinstance(result, GenerationResult)
    assert "".join(e.text for e in tokens) == "".join(e.released for e in tokens) == result.text


def test_a_blocking_request_is_woken_once_with_the_same_text(engine):
    """No events per token for a caller that only wants the result: one wake-up, and the text decoded
    at the end equals the streamed one, for sampled tokens (any bytes) and greedy ones."""
    for parameters in ({"do_sample": False}, {"seed": 7, "temperature": 1.5}, {"seed": 3, "top_k": 5}):
        handle = engine.submit(request(engine.settings, max_new_tokens=30, **parameters))
        events = list(handle.events())
        assert len(events) == 1 and isinstance(events[0], GenerationResult)
        streamed = engine.submit(request(engine.settings, max_new_tokens=30, stream=True, **parameters)).result()
        assert events[0] == streamed


def test_cancel_frees_the_slot_within_a_few_steps(make_engine):
    engine = make_engine()
    handle = engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False, stream=True))
    events = handle.events()
    next(events)  # it is running
    handle.cancel()
    assert wait_until(lambda: engine.stats() == {"running": 0, "waiting": 0, "admitted": 0}, timeout=5)
    with pytest.raises(Cancelled):
        list(events)


def test_cancel_while_waiting(make_engine):
    engine = make_engine(max_batch_size=1)
    busy = engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False))
    waiting = engine.submit(request(engine.settings, max_new_tokens=5))
    waiting.cancel()
    with pytest.raises(Cancelled):
        waiting.result()
    busy.cancel()
    assert wait_until(lambda: engine.stats()["admitted"] == 0)


def test_overload_is_refused_at_once(make_engine, slow_forward):
    engine = make_engine(max_concurrent_requests=2, max_batch_size=1)
    slow_forward(engine, 0.01)  # the two admitted requests cannot finish before the third arrives
    handles = [engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False)) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        engine.submit(request(engine.settings, max_new_tokens=5))
    assert time.monotonic() - started < 1.0
    assert info.value.status == 429 and info.value.to_dict() == {
        "error": "Model is overloaded",
        "error_type": "overloaded",
    }
    for h in handles:
        h.cancel()
    assert wait_until(lambda: engine.stats()["admitted"] == 0)
    # Admitted again once there is room (greedy: a sampled end-of-text could stop it after one token).
    assert run(engine, max_new_tokens=2, do_sample=False).generated_tokens == 2


def test_queue_deadline_answers_503(make_engine, slow_forward):
    engine = make_engine(max_batch_size=1, queue_timeout=0.2)
    slow_forward(engine, 0.01)  # the busy request then holds the only slot for ~2.5 s, well past 0.2 s
    busy = engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False))
    late = engine.submit(request(engine.settings, max_new_tokens=5))
    with pytest.raises(QueueTimeout, match="waited more than 0.2 s"):
        late.result()
    busy.cancel()


def test_stopped_engine_is_unhealthy_and_refuses(make_engine):
    engine = make_engine()
    assert engine.healthy()
    engine.stop()
    assert not engine.healthy()
    with pytest.raises(Unavailable):
        engine.submit(request(engine.settings))


def test_stop_answers_running_and_waiting_requests(make_engine):
    engine = make_engine(max_batch_size=1)
    running = engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False))
    waiting = engine.submit(request(engine.settings, max_new_tokens=250, do_sample=False))
    engine.stop()
    for handle in (running, waiting):
        with pytest.raises(Unavailable):
            handle.result()


def test_a_failing_forward_pass_fails_only_its_requests(make_engine, fail_forward_call):
    engine = make_engine()
    restore = fail_forward_call(engine, 3)
    with pytest.raises(Exception) as info:
        run(engine, max_new_tokens=10, do_sample=False)
    assert info.value.to_dict() == {"error": "Generation failed; see the server log", "error_type": "generation"}
    restore()
    assert engine.healthy()
    assert run(engine, max_new_tokens=3, do_sample=False).generated_tokens == 3  # greedy: no early end-of-text


def test_a_failing_update_fails_only_its_own_request(make_engine, monkeypatch):
    """A row whose per-token update raises (its text cannot be decoded, say) is answered with the error
    and leaves; the rows beside it in the same steps finish; the loop goes on."""
    from textgen.engine.generation import Generation

    real_append = Generation.append

    def append(self, token, logprob, top=None):
        if self.request.seed == 666 and len(self.generated) == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a tokenizer's bad day")
        return real_append(self, token, logprob, top)

    monkeypatch.setattr(Generation, "append", append)
    engine = make_engine()
    doomed = engine.submit(request(engine.settings, max_new_tokens=10, seed=666))
    fine = engine.submit(request(engine.settings, max_new_tokens=10, do_sample=False))
    with pytest.raises(Exception) as info:
        doomed.result()
    assert info.value.to_dict()["error_type"] == "generation"
    assert fine.result().generated_tokens == 10
    assert engine.healthy() and wait_until(lambda: engine.stats()["admitted"] == 0)


def test_thread_count_defaults_to_usable_cpus(tmp_path):
    import os
    import subprocess
    import sys

    from devtools.servers import ROOT
    from textgen.model.threads import available_cpus, whole_cpus_for

    affinity = len(os.sched_getaffinity(0))
    no_v1 = str(tmp_path / "no-v1")
    assert 1 <= available_cpus() <= affinity
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads at most
    assert available_cpus(str(quota), no_v1) == min(affinity, 2)
    quota.write_text("50000 100000\n")
    assert available_cpus(str(quota), no_v1) == 1
    quota.write_text("max 100000\n")
    assert available_cpus(str(quota), no_v1) == affinity
    assert available_cpus(str(tmp_path / "missing"), no_v1) == affinity
    # cgroup v1 (Docker/Podman on cgroup v1 hosts): cpu.cfs_quota_us / cpu.cfs_period_us.
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("10000\n")  # --cpus 0.1 -> one thread
    assert available_cpus(str(tmp_path / "missing"), str(v1)) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert available_cpus(str(tmp_path / "missing"), str(v1)) == affinity
    # ONNX Runtime's threads spin within a step only where the quota lets them all run at once.
    quota.write_text("150000 100000\n")
    assert not whole_cpus_for(2, str(quota), no_v1) and whole_cpus_for(1, str(quota), no_v1)
    quota.write_text("200000 100000\n")
    assert whole_cpus_for(2, str(quota), no_v1)
    assert whole_cpus_for(2, str(tmp_path / "missing"), str(v1))  # no quota
    # What the engine sets up, in a fresh process (the inter-op pool can be sized only before first use,
    # so in this one it would depend on which tests ran before): every usable CPU for intra-op work by
    # default, and a single inter-op thread.
    script = (
        "import torch; from textgen.model.threads import available_cpus; "
        "from textgen.model.torch_backend.torch_model import configure_threads; "
        "n = configure_threads(None); print(n, available_cpus(), torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    fresh = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    chosen, usable, intra, inter = map(int, fresh.stdout.split())
    assert chosen == usable == intra and inter == 1


def test_kv_budget_default_follows_the_memory_limit(tmp_path):
    """MAX_BATCH_TOTAL_TOKENS's default: the cgroup's limit (v2, else v1, never above the RAM) less what the
    process holds after load, the prefix cache and a quarter of the limit, in KV bytes a token."""
    from textgen.model.memory import default_batch_total_tokens, memory_limit, resident_bytes

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    missing, v1 = str(tmp_path / "missing"), tmp_path / "v1"
    v2 = tmp_path / "memory.max"
    v2.write_text("1073741824\n")  # --memory 1g
    assert memory_limit(str(v2), missing) == min(ram, 2**30)
    v2.write_text("max\n")
    assert memory_limit(str(v2), missing) == ram
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("536870912\n")  # cgroup v1, --memory 512m
    assert memory_limit(missing, str(v1)) == min(ram, 2**29)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert memory_limit(missing, str(v1)) == ram
    assert memory_limit(missing, missing) == ram
    assert 0 < resident_bytes() < ram
    # SmolLM2 (46,080 bytes a token) in 1 GiB: 1024 - 300 held - 1024 / 4 margin - 2048 prefix tokens' 90 MiB.
    mib = 2**20
    expected = (1024 * mib - 300 * mib - 256 * mib - 2048 * 46080) // 46080
    assert default_batch_total_tokens(46080, 2048 * 46080, 1024 * mib, 300 * mib) == expected == 8601
    assert default_batch_total_tokens(46080, 0, 512 * mib, 600 * mib) == 1  # no room: every prompt refused, no OOM


def test_rows_wait_for_the_kv_budget_and_a_request_larger_than_it_is_refused(make_engine):
    """MAX_BATCH_TOTAL_TOKENS: with room for one request's prompt + max_new_tokens, three requests submitted
    together run one at a time (every decode step has one row) and all are answered; a request larger
    than the budget is a 422 at submit, and the limits /info reports are capped at the budget."""
    engine = make_engine(max_batch_total_tokens=40, max_batch_size=4)
    assert engine.batch_total_tokens == 40 and engine.max_total_tokens == 40 and engine.info()["max_batch_total_tokens"] == 40
    with DecodeSteps(engine) as steps:
        handles = submit_together(engine, steps, [request(engine.settings, max_new_tokens=20, do_sample=False)] * 3)
        results = [h.result() for h in handles]
    assert [r.generated_tokens for r in results] == [20, 20, 20]
    assert set(steps.rows) == {1}, steps.rows  # never two rows at once: 2 x (2 + 20) > 40
    with pytest.raises(ValidationError, match=r"must be <= 40"):
        engine.submit(request(engine.settings, max_new_tokens=39))
    unbounded = make_engine(max_batch_total_tokens=10**6, max_batch_size=4)
    with DecodeSteps(unbounded) as steps:
        handles = submit_together(unbounded, steps, [request(unbounded.settings, max_new_tokens=20, do_sample=False)] * 3)
        [h.result() for h in handles]
    assert steps.rows[0] == 3  # the same three together when the budget allows
