"""The UNet step served from a CUDA graph (sd.cuda_graph).

On a CPU the wrapper's logic — static inputs, signatures, weight tracking, output cloning,
release — runs against a replay backend that behaves like a graph: `replay()` recomputes the
captured call from the *static* input buffers into the *same* output tensors. A wrapper that
forgot to copy new inputs in, or handed out the static outputs themselves, fails these tests.
The real torch.cuda.CUDAGraph runs in the CUDA tests (skipped without a GPU).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezegen.sd import lean
from squeezegen.sd.cuda_graph import CUDAGraphForward, enable_cuda_graph
from squeezegen.sd.residency import enable_phase_residency

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for x in out for t in _leaves(x)]
    return [out.sample]


class ReplayBackend:
    """A CUDA graph's contract on any device: outputs live in fixed tensors that replay() rewrites."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.warmups = fail, 0

    def capture(self, fn, warmup):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        for _ in range(warmup):
            fn()
            self.warmups += 1
        outputs = fn()

        def replay():
            for static, fresh in zip(_leaves(outputs), _leaves(fn())):
                static.copy_(fresh)

        return replay, outputs


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    from squeezegen.sd.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    unet = UNet2DConditionModel.from_config(pipe.unet.config).eval()
    unet.load_state_dict(pipe.unet.state_dict())
    return unet


def _fresh(tiny_unet):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(tiny_unet.config).eval()
    unet.load_state_dict(tiny_unet.state_dict())
    return unet


def _inputs(seed: int, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 77, 256, generator=gen)


@torch.inference_mode()
def test_replays_give_the_eager_results_for_every_new_input(tiny_unet):
    unet = _fresh(tiny_unet)
    eager = [unet(*(x := _inputs(s))[:1], torch.tensor(t), encoder_hidden_states=x[1], return_dict=False)[0]
             for s, t in ((0, 900), (1, 500), (2, 100))]
    graph = enable_cuda_graph(unet, backend=ReplayBackend())
    got = [unet(*(x := _inputs(s))[:1], torch.tensor(t), encoder_hidden_states=x[1], return_dict=False)[0]
           for s, t in ((0, 900), (1, 500), (2, 100))]
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert graph.stats.as_dict() == {"captures": 1, "replays": 3, "eager_calls": 0, "releases": 0, "error": None}
    assert unet.cuda_graph is graph


@torch.inference_mode()
def test_serial_cfg_over_the_graph_keeps_both_halves(tiny_unet):
    """Serial CFG calls the graphed step twice per pipeline call: the first result must survive the second replay."""
    unet = _fresh(tiny_unet)
    sample, text = _inputs(3, batch=2)  # [uncond, cond]
    batched = unet(sample, torch.tensor(10), encoder_hidden_states=text, return_dict=False)[0]
    graph = enable_cuda_graph(unet, backend=ReplayBackend())
    lean.enable_serial_cfg(unet)
    for _ in range(2):
        serial = unet(sample, torch.tensor(10), encoder_hidden_states=text, return_dict=False)[0]
        torch.testing.assert_close(serial, batched, rtol=1e-4, atol=1e-5)
    assert (graph.stats.captures, graph.stats.replays) == (1, 4)  # one batch-1 graph, two replays per call


@torch.inference_mode()
def test_a_new_shape_or_moved_weights_capture_again(tiny_unet):
    unet = _fresh(tiny_unet)
    graph = enable_cuda_graph(unet, backend=ReplayBackend())
    x, text = _inputs(0)
    unet(x, torch.tensor(5), encoder_hidden_states=text)
    unet(x, torch.tensor(6), encoder_hidden_states=text)
    assert graph.stats.captures == 1
    x2, text2 = _inputs(1, batch=2)
    unet(x2, torch.tensor(5), encoder_hidden_states=text2)  # batch 2: another signature
    assert graph.stats.captures == 2
    unet.conv_in.weight = nn.Parameter(unet.conv_in.weight.detach().clone())  # as residency re-points a slot
    unet(x2, torch.tensor(5), encoder_hidden_states=text2)
    assert graph.stats.captures == 3
    unet(x2, torch.tensor(5), encoder_hidden_states=text2, return_dict=True)  # a different flag: its own graph
    assert graph.stats.captures == 4


@torch.inference_mode()
def test_uncapturable_calls_and_failed_captures_run_eagerly(tiny_unet):
    unet = _fresh(tiny_unet)
    x, text = _inputs(0)
    want = unet(x, torch.tensor(7), encoder_hidden_states=text).sample
    graph = enable_cuda_graph(unet, backend=ReplayBackend())
    out = unet(x, torch.tensor(7), encoder_hidden_states=text, cross_attention_kwargs={"scale": 1.0}).sample
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert (graph.stats.eager_calls, graph.stats.captures) == (1, 0)

    failing = _fresh(tiny_unet)
    broken = enable_cuda_graph(failing, backend=ReplayBackend(fail=True), on_error="eager")
    for _ in range(2):
        torch.testing.assert_close(failing(x, torch.tensor(7), encoder_hidden_states=text).sample, want, rtol=0, atol=0)
    assert broken.stats.error == "RuntimeError: operation not permitted when stream is capturing"
    assert (broken.stats.eager_calls, broken.stats.captures) == (2, 0)  # no second attempt

    strict = _fresh(tiny_unet)
    enable_cuda_graph(strict, backend=ReplayBackend(fail=True))
    with pytest.raises(RuntimeError, match="stream is capturing"):
        strict(x, torch.tensor(7), encoder_hidden_states=text)


def test_residency_releases_the_graph_when_the_unet_phase_ends():
    class Pipe:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.text_encoder, self.unet, self.vae = nn.Linear(8, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    pipe = Pipe()
    graph = enable_cuda_graph(pipe.unet, backend=ReplayBackend())
    residency = enable_phase_residency(pipe, "cpu")
    residency.on_leave("unet", graph.release)
    with torch.inference_mode():
        for _ in range(2):  # two images: encode, three denoising steps, decode
            h = pipe.text_encoder(torch.randn(1, 8))
            for _ in range(3):
                h = pipe.unet(h)
            assert graph._replay is not None
            pipe.vae(h)
            assert graph._replay is None  # dropped as the decode phase began
    assert graph.stats.as_dict() == {"captures": 2, "replays": 6, "eager_calls": 0, "releases": 2, "error": None}
    with pytest.raises(ValueError, match="not 'safety_checker'"):
        residency.on_leave("safety_checker", graph.release)


def test_warmup_and_device_checks(tiny_unet):
    with pytest.raises(ValueError, match="warmup"):
        CUDAGraphForward(nn.Linear(2, 2), warmup=0, backend=ReplayBackend())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need a CUDA device"):
            enable_cuda_graph(nn.Linear(2, 2))


@cuda
@torch.inference_mode()
def test_cuda_graph_matches_eager_on_the_gpu(tiny_unet):
    unet = _fresh(tiny_unet).to("cuda", torch.float16)
    steps = [(s, t) for s, t in ((0, 900), (1, 400))]
    run = lambda: [unet(x.to("cuda", torch.float16), torch.tensor(t, device="cuda"),  # noqa: E731
                        encoder_hidden_states=e.to("cuda", torch.float16), return_dict=False)[0].clone()
                   for (x, e), t in ((_inputs(s), t) for s, t in steps)]
    eager = run()
    graph = enable_cuda_graph(unet)
    got = run()
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert (graph.stats.captures, graph.stats.replays) == (1, 2)
    unet.to("cpu").to("cuda")  # new addresses: a stale graph would read freed memory
    torch.testing.assert_close(run()[0], eager[0], rtol=1e-3, atol=1e-3)
    assert graph.stats.captures == 2
