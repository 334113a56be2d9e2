//! Trainer workers: feature hashing, models, streaming evaluation (TRAIN.md).
