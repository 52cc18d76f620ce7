"""Shared test settings.

Tolerance policy: the decoders are compared in float64 on the CPU. Tokens must be *identical* (argmax over
float64 logits; SPEED batches rows differently from sequential decoding, which perturbs logits by ~1e-15, far
below any gap between the top two logits of these random models). Tensors (logits, KV caches) that the two
paths compute with different batching are compared with `torch.testing.assert_close(rtol=1e-9, atol=1e-9)`.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")
