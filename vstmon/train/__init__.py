"""Fine-tuning: ``vstmon train`` and ``vstmon eval`` (data listing, clip sampling, the training loop, metrics)."""
