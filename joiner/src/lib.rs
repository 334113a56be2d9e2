//! The joiner: four event streams in, training samples out (JOIN.md).
