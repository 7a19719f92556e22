"""The exported model's interface: what every part that talks to a charlm SavedModel version agrees on.

- `signatures`: the signature names, their inputs and outputs, and `SamplingSettings` (the one typed value
  that becomes `generate`'s sampling inputs); the only place those names and bounds are written.
- `versions`: TensorFlow Serving's version layout (next version, newest complete version, atomic publish,
  the sweep of abandoned builds); the only place that lists version directories.
- `metadata`: `ModelMetadata`, a version's `assets.extra/charlm.json`, read one way everywhere.
- `client`: `ModelClient` with two transports, in-process SavedModel and TF Serving gRPC.
- `errors`: the typed failures all of these raise; callers map them (the gateway to HTTP statuses).
- `cpu`: this CPU as /proc/cpuinfo describes it: its bfloat16 units, where a bf16 version is fast.

It imports nothing of training/, serving/, analysis/, tests/ or benchmarks/, and they all import it
(docs/architecture.md). TensorFlow is imported only where a call needs it, so a wrong path fails fast.
"""
