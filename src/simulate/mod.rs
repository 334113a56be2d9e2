//! The event simulator (`odl simulate`): a deterministic, drifting stream of the four input streams with a hidden ground-truth click model.
