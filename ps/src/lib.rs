//! The parameter server: sparse and dense parameters, optimizers, checkpoints, gRPC, publishing (TRAIN.md, PUBLISH.md).
