"""Thin adapters that drive `gradwatch.Recorder` from the frameworks people train with.

- `gradwatch.integrations.lightning.GradwatchCallback`: a `lightning.pytorch` callback;
- `gradwatch.integrations.huggingface.GradwatchCallback`: a `transformers.TrainerCallback`;
- `gradwatch.integrations.keras.GradwatchCallback`: a Keras 3 callback (TensorFlow backend).

Each is imported on its own, so only the framework it adapts is needed: importing this
package imports neither. What they do on each rank of a DDP or FSDP2 run is in
`gradwatch.integrations.distributed` and docs/integrations.md.
"""
