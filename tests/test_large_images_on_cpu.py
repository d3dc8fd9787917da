"""Large images on the CPU: a one-line notice of the cost before the work starts, and Ctrl-C stopping a decode
between denoising steps (not after the whole decode)."""

import logging
import os
import signal
import subprocess
import sys
import time

import PIL.Image

import slim_diffusers.pipelines.pipeline_slim as pipeline_slim
from slim_diffusers.cli import main
from slim_diffusers.testing import tiny_pipeline


def test_a_notice_of_the_cost_before_coding_a_large_image_on_the_cpu(monkeypatch, caplog):
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (48, 40), (200, 40, 40))
    with caplog.at_level(logging.WARNING, logger="slim_diffusers"):
        (bs,) = pipe.compress(image, captions="x")
        pipe.decompress(bs, num_inference_steps=4, strength=0.5)
    assert not [r for r in caplog.records if "on the CPU" in r.getMessage()]  # small: no notice

    monkeypatch.setattr(pipeline_slim, "LARGE_CPU_NOTICE_PIXELS", 40 * 40)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slim_diffusers"):
        (bs,) = pipe.compress(image, captions="x")
        pipe.decompress(bs, num_inference_steps=4, strength=0.5)
    notices = [r.getMessage() for r in caplog.records if "on the CPU" in r.getMessage()]
    assert len(notices) == 2 and all("\n" not in n and "Ctrl-C stops it" in n for n in notices)
    assert notices[0].startswith("compressing 48×40 (0.0 megapixels) on the CPU")
    assert notices[1].startswith("decoding 48×40") and "2 denoising step(s)" in notices[1]


def _interruptible():
    """In the child, before it starts: SIGINT as a terminal delivers it. A shell starts background jobs (a CI job run
    with ``&``, say) with SIGINT ignored, and a Python started so never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ctrl_c(child, timeout: float):
    """Send the child a Ctrl-C; its remaining stderr and the seconds it took to exit."""
    child.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    rest = child.communicate(timeout=timeout)[1]
    return rest, time.perf_counter() - sent


def test_ctrl_c_stops_a_decode_between_denoising_steps(tmp_path):
    # the bundled model at 256², 400 denoising steps from noise (far longer than the test waits); the notice threshold
    # is lowered so that the notice marks the moment decoding starts
    image = tmp_path / "in.png"
    PIL.Image.new("RGB", (256, 256), (30, 120, 200)).save(image)
    assert main(["compress", str(image), "--model", "toy", "--caption", "a star", "-o", str(tmp_path / "slim")]) == 0
    code = ("import sys; import slim_diffusers.pipelines.pipeline_slim as p; p.LARGE_CPU_NOTICE_PIXELS = 1000; "
            "from slim_diffusers.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "decoded"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code, "decompress", str(tmp_path / "slim" / "in.slim"), "--model",
                              "toy", "--steps", "400", "--strength", "1", "-o", str(out)],
                             env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             preexec_fn=_interruptible)
    try:
        seen = ""
        while "Ctrl-C stops it" not in seen:
            line = child.stderr.readline()
            assert line, f"the decode ended before its notice: {seen}"
            seen += line
        time.sleep(3)  # into the denoising loop
        assert child.poll() is None
        rest, stopped = _ctrl_c(child, timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, seen + rest
    assert "slim: interrupted" in rest and "Traceback" not in rest
    assert stopped < 20, f"{stopped:.1f} s from Ctrl-C to exit"  # one 64×64-latent step takes well under a second
    assert not out.exists()  # nothing half-written, no empty folder


def test_ctrl_c_is_answered_during_one_long_torch_operation(tmp_path):
    # one operation that holds the main thread for many seconds, as one attention over the latent of a 4000×3000 image
    # does on the CPU (over a minute); the command runs in a worker thread, so Ctrl-C does not wait for it
    code = ("import sys, time, torch; import slim_diffusers.cli as cli; torch.set_num_threads(1)\n"
            "def long_op(args):\n"
            "    print('started', file=sys.stderr, flush=True)\n"
            "    for _ in range(1000):\n"
            "        torch.ones(3000, 3000) @ torch.ones(3000, 3000)\n"
            "    return 0\n"
            "a = torch.ones(3000, 3000); t = time.perf_counter(); a @ a; one = time.perf_counter() - t\n"
            "print(f'one {one:.3f}', file=sys.stderr, flush=True)\n"
            "cli._cmd_info = long_op\n"
            "sys.exit(cli.main(['info', 'x.slim']))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                             preexec_fn=_interruptible)
    try:
        one = float(child.stderr.readline().split()[1])  # seconds of one operation on this machine, now
        assert child.stderr.readline().strip() == "started"
        time.sleep(0.5)
        rest, stopped = _ctrl_c(child, timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and "slim: interrupted" in rest, rest
    assert stopped < max(2.0, one / 2), f"{stopped:.2f} s from Ctrl-C to exit; one operation takes {one:.2f} s"
