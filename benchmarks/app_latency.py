"""Response time of the web demo (``slim app``) per request, as a browser's request sees it: a server on
127.0.0.1 with the bundled model, driven through ``gradio_client`` (queue, upload, compress, both decodes, the
bit-allocation map, the classifier on both images, the download). Bundled images in turn, each rate level in turn,
the model's own decode settings.

    .venv/bin/python benchmarks/app_latency.py                 # 21 requests, 2 torch threads
    .venv/bin/python benchmarks/app_latency.py --requests 5    # a quick look

Prints the median and the range of the wall-clock time, the median CPU time of this process (server and client;
what the request costs whatever else runs), the machine's load average before and after, and the model's loading
time.
"""

import argparse
import os
import socket
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    torch.set_num_threads(args.threads)
    from gradio_client import Client, handle_file

    from slim_diffusers.app import SLIMDemo, build_demo, launch

    load_before = os.getloadavg()
    start = time.perf_counter()
    demo = SLIMDemo()
    loading = time.perf_counter() - start
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = build_demo(demo=demo)
    launch(page, port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    images = demo.bundled_images()
    steps, strength = demo.decode["num_inference_steps"], demo.decode["strength"]
    times, cpu = [], []
    try:
        for i in range(args.requests + 1):  # the first request warms up and is not counted
            image = images[i % len(images)]
            rate = i % max(demo.rate_levels, 1)
            start, start_cpu = time.perf_counter(), time.process_time()
            client.predict(handle_file(str(image)), rate, steps, strength, demo.bundled_caption(image),
                           api_name="/compress")
            if i:
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    finally:
        page.close()
    load_after = os.getloadavg()
    print(f"model loaded in {loading:.1f} s; {len(times)} requests ({images[0].name} and the other bundled 96×96 "
          f"images, rates 0…{max(demo.rate_levels - 1, 0)}, {steps} steps at strength {strength:g}), "
          f"{args.threads} torch threads")
    print(f"per request: median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; CPU time median {statistics.median(cpu) * 1000:.0f} ms")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
