"""`sapray plan`'s time estimates, by hand (its token counts are checked against real runs in test_resume.py,
test_generate.py and test_no_silent_minute.py)."""

from __future__ import annotations


def test_plan_times_are_work_over_the_measured_rate_plus_the_engine_starts_the_stage_pays():
    """By hand: 2 actors of 1 CPU scoring 9,940 tokens at the hf CPU rate per core, one engine start; vLLM
    generation on a GPU, where no start is measured, says so instead of guessing."""
    from sapray.core.costs import STARTS, THROUGHPUT, seconds_for
    from sapray.dataplane.placement import Placement

    rate = THROUGHPUT[("hf", "cpu", "score")][0]
    start = STARTS[("hf", "cpu")][0]
    two_cores = Placement(actors=2, num_gpus=0, num_cpus=1)
    assert seconds_for(9940, "hf", "score", two_cores, 0).value == round(9940 / (2 * rate), 1)
    with_starts = seconds_for(9940, "hf", "score", two_cores, 3)
    assert with_starts.value == round(9940 / (2 * rate) + 3 * start, 1) and "3 engine start(s)" in with_starts.note
    gpu = seconds_for(1000, "vllm", "generate", Placement(actors=1, num_gpus=1, num_cpus=1), 1)
    assert gpu.value is None and "no measured throughput" in gpu.note


def test_plan_data_plane_is_the_scored_tokens_over_the_rehearsed_rate_with_the_cores_an_actor_needs():
    """By hand: the data plane's CPU-seconds are the tokens over the measured data-plane rate, and the cores per
    actor the actor's measured rate over it (on a GPU: per actor; on CPUs: per core it reserves); an engine
    with no measured rate gets no cores."""
    from sapray.core.costs import DATA_PLANE, THROUGHPUT, data_plane_for
    from sapray.dataplane.placement import Placement

    rate = DATA_PLANE[0]
    gpu = data_plane_for(3_000_000, "hf", "score", Placement(actors=8, num_gpus=1, num_cpus=1))
    assert (gpu.value, gpu.kind, gpu.unit) == (round(3_000_000 / rate, 1), "estimate", "CPU-s")
    assert f"{THROUGHPUT[('hf', 'gpu', 'score')][0] / rate:.2f} data-plane cores per actor" in gpu.note
    cpu = data_plane_for(1000, "hf", "score", Placement(actors=2, num_gpus=0, num_cpus=4))
    assert f"{4 * THROUGHPUT[('hf', 'cpu', 'score')][0] / rate:.2f} data-plane cores per actor" in cpu.note
    unmeasured = data_plane_for(1000, "sim", "score", Placement(actors=1, num_gpus=0, num_cpus=1))
    assert unmeasured.value == round(1000 / rate, 1) and "cores per actor" not in unmeasured.note
