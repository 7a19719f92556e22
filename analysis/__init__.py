"""The paper's analyses ("Visualizing and Understanding Recurrent Networks", Karpathy, Johnson & Fei-Fei, 2015)
on any exported model version: activations, interpretable cells, gate saturation, n-gram baselines, error
analysis, and the report that gathers them (`python -m analysis.report`). Reads exported SavedModels only,
through model_interface's ModelClient (in-process or TensorFlow Serving); never imports training/.
docs/analysis.md explains it."""
