"""A fused model served from several Python threads at once (as an inference server's worker
threads call it): first calls of new shapes race to fill the folded-weight caches and the CPU
conv autotuner, and every thread must still get the model's output."""
import threading

import torch

from test_fuse_export import images, rel_close, small_pair


def test_threads_calling_one_fused_model_get_its_outputs():
    stock, fused = small_pair()
    cl = torch.channels_last
    stock, fused = stock.eval().to(memory_format=cl), fused.eval().to(memory_format=cl)
    # Batch sizes and resolutions no call has seen yet: every thread's first calls fill caches.
    inputs = [images(n, size, seed=i).contiguous(memory_format=cl)
              for i, (n, size) in enumerate([(1, 32), (2, 40), (3, 32), (4, 24), (2, 32), (1, 48)])]
    results, errors = {}, []

    def serve(worker):
        try:
            for k in range(len(inputs)):
                i = (worker + k) % len(inputs)
                with torch.no_grad():
                    results[worker, i] = fused(inputs[i])
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == 6 * len(inputs)
    with torch.no_grad():
        expected = [stock(x) for x in inputs]
    for (_, i), y in results.items():
        rel_close(y, expected[i], 1e-5)
